"""The base of both protocols' response models: written with `exclude_none`, except for the keys the protocol
always sends, even as null (`always_sent`), which are put back."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_serializer


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    always_sent: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _keep_nulls(self, handler):
        data = handler(self)
        for key in self.always_sent:
            data.setdefault(key, getattr(self, key))
        return data

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)

"""Builds the effective `Config` for a command: defaults, then command-line flags."""

from __future__ import annotations

import argparse
from dataclasses import replace

from kimi_local.config import Config


def load_settings(args: argparse.Namespace) -> Config:
    config = Config()
    if getattr(args, "model", None):
        config = replace(config, model=args.model)
    return config

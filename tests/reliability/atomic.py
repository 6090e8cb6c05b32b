"""Killing a process in the middle of saving: the routing profile (`cache/profile.py`) and a saved
conversation (`tui/store.py`) must always be found whole, in their previous or their new version.

A writer process (this module run as `python -m tests.reliability.atomic KIND PATH`) saves version after
version of one file as fast as it can and prints each version number once `save()` has returned. Each version
is self-describing (every value in it is derived from the version number), so a file mixing two versions or
cut short is detected on load. The parent kills the writer with SIGKILL at a random moment after a random
number of saves, then loads the file: it must load, be consistent, and hold the last acknowledged version or
the one being written. Temporary files left by a killed writer are counted (they are never read as data).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROFILE_SHAPE = (61, 2048)  # Kimi's 61 layers; more experts than Kimi's 384 so a save takes a while (2 MB)
CONVERSATION_ID = "20260101-000000-abcdef"
CONVERSATION_TURNS = 200
TURN_CHARS = 10_000


def profile_version(k: int):
    from kimi_local.cache.profile import RoutingProfile

    profile = RoutingProfile(*PROFILE_SHAPE, model="reliability", first_layer=1)
    profile.usage[:] = k
    profile.router_mass[:] = k / 2
    profile.tokens = float(k)
    return profile


def load_profile_version(path: Path) -> int:
    from kimi_local.cache.profile import RoutingProfile

    profile = RoutingProfile.load(path, *PROFILE_SHAPE, model="reliability", first_layer=1)
    k = int(profile.tokens)
    if not ((profile.usage == k).all() and (profile.router_mass == k / 2).all()):
        raise ValueError(f"{path}: profile mixes versions (tokens {k})")
    return k


def conversation_version(k: int):
    from kimi_local.tui.conversation import ChatMessage, Conversation

    messages = [ChatMessage("user" if i % 2 == 0 else "assistant", f"{k}:{i}:" + "é" * TURN_CHARS)
                for i in range(CONVERSATION_TURNS)]
    return Conversation(id=CONVERSATION_ID, messages=messages, title=f"version {k}", created=0.0, updated=float(k))


def load_conversation_version(path: Path) -> int:
    from kimi_local.tui.store import ConversationStore

    conversation = ConversationStore(path.parent).load(CONVERSATION_ID)
    k = int(conversation.updated)
    expected = [f"{k}:{i}:" + "é" * TURN_CHARS for i in range(CONVERSATION_TURNS)]
    if conversation.title != f"version {k}" or [m.content for m in conversation.messages] != expected:
        raise ValueError(f"{path}: conversation mixes versions (updated {k})")
    return k


def save_in_place(profile, path: Path) -> None:
    """What `RoutingProfile.save` must not do: overwrite the file where it is (the harness's own check)."""
    import numpy as np

    with open(path, "wb") as f:
        np.savez(f, usage=profile.usage, router_mass=profile.router_mass, tokens=np.float64(profile.tokens),
                 half_life_tokens=np.float64(profile.half_life_tokens), model=np.str_(profile.model))


KINDS = {
    "profile": (lambda root: root / "profile.npz", load_profile_version),
    "conversation": (lambda root: root / f"{CONVERSATION_ID}.json", load_conversation_version),
    "in-place profile": (lambda root: root / "profile.npz", load_profile_version),
}


def writer(kind: str, path: Path) -> None:
    """The child: save versions last+1, last+2, ... forever, acknowledging each on stdout."""
    if kind == "profile":
        save = lambda k: profile_version(k).save(path)  # noqa: E731
    elif kind == "in-place profile":
        save = lambda k: save_in_place(profile_version(k), path)  # noqa: E731
    else:
        from kimi_local.tui.store import ConversationStore

        store = ConversationStore(path.parent)
        save = lambda k: store.save(conversation_version(k))  # noqa: E731
    try:
        k = KINDS[kind][1](path)
    except Exception:  # noqa: BLE001 - no file yet, or one a non-atomic writer tore (the parent reports it)
        k = 0
    while True:
        k += 1
        save(k)
        print(k, flush=True)


@dataclass
class KillReport:
    kind: str
    kills: int = 0
    intact: int = 0
    mid_write: int = 0  # kills that left the new version's temporary file behind: caught in the middle
    problems: list[str] = field(default_factory=list)

    @property
    def survived(self) -> bool:
        return not self.problems and self.intact == self.kills


def kill_while_writing(kind: str, workdir: Path, kills: int, seed: int = 0) -> KillReport:
    path = KINDS[kind][0](Path(workdir))
    load = KINDS[kind][1]
    rng = random.Random(seed)
    report = KillReport(kind)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(kills):
        before = set(Path(workdir).iterdir())
        proc = subprocess.Popen([sys.executable, "-m", "tests.reliability.atomic", kind, str(path)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        acknowledged = None
        for _ in range(rng.randint(1, 4)):
            line = proc.stdout.readline()
            if not line:
                report.problems.append(f"the writer died: {proc.stderr.read()[-500:]}")
                return report
            acknowledged = int(line)
        time.sleep(rng.random() * 0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for line in proc.stdout.read().split():  # acknowledgements still in the pipe
            acknowledged = int(line)
        proc.stdout.close()
        proc.stderr.close()
        report.kills += 1
        leftovers = [p for p in set(Path(workdir).iterdir()) - before if p.name.endswith(".tmp")]
        report.mid_write += bool(leftovers)
        for p in leftovers:
            p.unlink()
        try:
            version = load(path)
        except Exception as exc:  # noqa: BLE001 - anything that does not load is the failure being tested
            report.problems.append(f"after a kill: {type(exc).__name__}: {exc}"[:300])
            continue
        if version not in (acknowledged, acknowledged + 1):
            report.problems.append(f"found version {version}, the writer had acknowledged {acknowledged}")
            continue
        report.intact += 1
    return report


if __name__ == "__main__":
    writer(sys.argv[1], Path(sys.argv[2]))

"""The cluster image runs as an unprivileged user (checked on the Dockerfile's instructions)."""

from __future__ import annotations

from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "infra" / "docker" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest))
            current = ""
    return lines


def test_the_image_runs_its_command_as_a_non_root_user() -> None:
    steps = _instructions()
    users = [(i, rest) for i, (word, rest) in enumerate(steps) if word == "USER"]
    cmd = max(i for i, (word, _) in enumerate(steps) if word in ("CMD", "ENTRYPOINT"))
    assert users, "no USER instruction: the container would run as root"
    last_index, last_user = users[-1]
    name = last_user.split(":")[0]
    assert last_index < cmd and name not in ("root", "0")
    created = " ".join(rest for word, rest in steps if word == "RUN")
    assert "useradd" in created and name in created  # the user exists in the image
    copied = [rest for word, rest in steps[last_index:] if word in ("COPY", "ADD", "RUN")]
    assert copied == []  # nothing is installed or copied after dropping root

"""Read docker/docker-compose*.yml the way `docker compose` does (for what these files use), and run their
services as local processes: no Docker engine needed.

What this implements of Compose: `.env` files, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`,
`${VAR?error}`, `$VAR` and `$$`; YAML anchors and `<<` merge keys (PyYAML); several `-f` files merged (mappings
merged key by key, `ports`/`volumes` appended, other lists replaced); `extends` with `file` and `service`;
environment, command and healthcheck in their mapping/list/string forms.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
COMPOSE_GPU = DOCKER / "docker-compose.gpu.yml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILE = DOCKER / "Dockerfile"

_VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?)(?P<arg>.*))?$", re.S)
_APPENDED_LISTS = {"ports", "volumes", "expose"}


class MissingVariable(ValueError):
    """A `${VAR:?message}` whose variable is unset (or empty)."""


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; `#` comments and blank lines skipped; matching outer quotes removed."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ValueError(f"{path}:{number}: not KEY=VALUE: {line!r}")
        key, value = line.split("=", 1)
        key, value = key.strip().removeprefix("export ").strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        braced = _BRACED.match(match["braced"])
        if not braced:
            raise ValueError(f"invalid interpolation: {match[0]!r}")
        name, op, arg = braced["name"], braced["op"], braced["arg"] or ""
        value = env.get(name)
        if op == ":-":
            return value if value else interpolate(arg, env)
        if op == "-":
            return value if value is not None else interpolate(arg, env)
        if op == ":?" and not value or op == "?" and value is None:
            raise MissingVariable(f"required variable {name} is missing a value: {arg}")
        return value or ""

    return _VARIABLE.sub(substitute, text)


def variables_in(node) -> set[str]:
    """Names of every variable a compose document interpolates."""
    if isinstance(node, str):
        names = set()
        for match in _VARIABLE.finditer(node):
            if match["named"]:
                names.add(match["named"])
            elif match["braced"]:
                braced = _BRACED.match(match["braced"])
                names.add(braced["name"])
                names |= variables_in(braced["arg"] or "")
        return names
    if isinstance(node, dict):
        return set().union(*(variables_in(k) | variables_in(v) for k, v in node.items())) if node else set()
    if isinstance(node, list):
        return set().union(*(variables_in(v) for v in node)) if node else set()
    return set()


def _interpolate_all(node, env):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {k: _interpolate_all(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_all(v, env) for v in node]
    return node


def _merge(base, override, key: str | None = None):
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            merged[k] = _merge(base[k], v, k) if k in base else v
        return merged
    if isinstance(base, list) and isinstance(override, list) and key in _APPENDED_LISTS:
        return base + [v for v in override if v not in base]
    return override


def raw_documents(paths: list[Path]) -> list[dict]:
    return [yaml.safe_load(Path(p).read_text()) for p in paths]


def load(paths: list[Path], env: dict[str, str]) -> dict:
    """The merged, interpolated compose model of `paths` (like `docker compose -f a -f b config`)."""
    model: dict = {}
    for path in paths:
        document = yaml.safe_load(Path(path).read_text())
        for name, service in (document.get("services") or {}).items():
            if service and "extends" in service:
                ext = service["extends"]
                source = (Path(path).parent / ext["file"]) if ext.get("file") else Path(path)
                base = yaml.safe_load(source.read_text())["services"][ext["service"]]
                service = _merge(base, {k: v for k, v in service.items() if k != "extends"})
                document["services"][name] = service
        model = _merge(model, document)
    return _interpolate_all(model, env)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v)) for k, v in env.items()}


def command(service: dict) -> list[str]:
    cmd = service.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd or []]


def healthcheck_argv(service: dict) -> list[str] | None:
    check = service.get("healthcheck")
    if not check or check.get("disable"):
        return None
    test = check["test"]
    if isinstance(test, str):
        return ["sh", "-c", test]
    if test[0] == "CMD":
        return list(test[1:])
    if test[0] == "CMD-SHELL":
        return ["sh", "-c", test[1]]
    return None  # ["NONE"]


def container_ports(service: dict) -> list[int]:
    """Container-side ports of `ports` entries (short syntax: [ip:][host:]container[/proto], or long)."""
    result = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            result.append(int(entry["target"]))
        else:
            result.append(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return result


def named_volume_targets(service: dict) -> dict[str, str]:
    """{volume name: container path} for the service's named-volume mounts."""
    result = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            if entry.get("type", "volume") == "volume":
                result[entry["source"]] = entry["target"]
        else:
            source, target = str(entry).split(":")[:2]
            if not source.startswith((".", "/", "~")):
                result[source] = target
    return result


def url_host_port(url: str) -> tuple[str | None, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443, "redis": 6379, "rediss": 6379}.get(parts.scheme)
    return parts.hostname, parts.port or default


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        instruction, _, args = full.partition(" ")
        result.append((instruction.upper(), args.strip()))
    return result


def dockerfile_env(path: Path = DOCKERFILE) -> dict[str, str]:
    env = {}
    for instruction, args in dockerfile_instructions(path):
        if instruction == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def localize(value: str, addresses: dict[tuple[str, int], tuple[str, int]]) -> str:
    """Rewrite `host:port` of compose services (as URLs name them) to the local processes' addresses."""
    for (host, port), (new_host, new_port) in addresses.items():
        value = re.sub(rf"(?<=//){re.escape(host)}:{port}(?=[/'\"]|$)", f"{new_host}:{new_port}", value)
        value = re.sub(rf"(?<=@){re.escape(host)}:{port}(?=[/'\"]|$)", f"{new_host}:{new_port}", value)
    return value


def local_argv(argv: list[str]) -> list[str]:
    """The image's programs on this machine: `rlhf-backend` (the console script, or `python -m backend.cli`
    where the project is not pip-installed), and `python` = this interpreter, which has the project."""
    if not argv:
        return argv
    program, rest = argv[0], argv[1:]
    if program == "rlhf-backend":
        script = Path(sys.executable).parent / "rlhf-backend"
        return ([str(script)] if script.exists() else [sys.executable, "-m", "backend.cli"]) + rest
    if program in ("python", "python3"):
        return [sys.executable] + rest
    found = shutil.which(program)
    return [found or program] + rest

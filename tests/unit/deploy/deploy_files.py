"""Readers for compose.yaml, the Dockerfile and .dockerignore, for the deploy checks.

No Docker engine is needed: each reader implements the small part of the real format the
checks rely on (Compose variable interpolation, Dockerfile instructions and stages,
.dockerignore patterns) and refuses what it does not understand.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from pydantic import BaseModel

from infra.settings import Settings, settings_to_env

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "compose.yaml"
PORTS_OVERRIDE_FILE = ROOT / "deploy" / "compose.ports.yaml"
SECRETS_SCRIPT = ROOT / "deploy" / "compose_secrets.py"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

INFRA_SERVICES = ("mongo", "kafka", "elasticsearch")
APP_SERVICES = ("auth", "api", "relay", "indexer")
K8S_DIR = ROOT / "deploy" / "k8s"

# The credentials each service needs, as the OUTBOX_* settings they fill (compose mounts
# them as secret files, Kubernetes as keys of the Secret outbox-secrets).
CREDENTIALS = {
    "auth": {"OUTBOX_AUTH_TOKEN_SECRET", "OUTBOX_MONGO_URI"},
    "api": {
        "OUTBOX_MONGO_URI",
        "OUTBOX_KAFKA_SASL_PASSWORD",
        "OUTBOX_ES_PASSWORD",
        "OUTBOX_API_CONSISTENCY_KEY",
    },
    "relay": {"OUTBOX_MONGO_URI", "OUTBOX_KAFKA_SASL_PASSWORD"},
    "indexer": {"OUTBOX_KAFKA_SASL_PASSWORD", "OUTBOX_ES_PASSWORD"},
}
# Where each service answers /healthz and /readyz: the setting holding the port.
PROBE_PORT_SETTING = {
    "auth": "OUTBOX_AUTH_METRICS_PORT",
    "api": "OUTBOX_API_PORT",
    "relay": "OUTBOX_RELAY_METRICS_PORT",
    "indexer": "OUTBOX_INDEXER_METRICS_PORT",
}
# Resident memory measured with deploy/measure_rss.py under `outbox dev` (MiB):
# idle, and peak over 3000 writes plus searches (docs/deploying.md, "Resources").
MEASURED_RSS_MIB = {
    "api": (118, 120),
    "auth": (103, 168),
    "relay": (99, 99),
    "indexer": (96, 108),
}


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


def setting_names() -> set[str]:
    """Every `OUTBOX_*` name the settings accept, named the way `settings_to_env` names them."""
    defaults = Settings(_env_file=None)
    names = set(settings_to_env(defaults))
    # settings_to_env leaves out optional fields that are unset (None), e.g. the ES password.
    for section_name in type(defaults).model_fields:
        section = getattr(defaults, section_name)
        if isinstance(section, BaseModel):
            names.update(
                f"OUTBOX_{section_name.upper()}_{name.upper()}"
                for name in type(section).model_fields
                if getattr(section, name) is None
            )
    return names


class MissingVariableError(LookupError):
    """A `${VAR:?message}` whose variable is unset or empty, as `docker compose` reports it."""


_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose interpolation: `${VAR}`, `${VAR:-d}`, `${VAR-d}`, `${VAR:?e}`, `${VAR?e}`, `$$`."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in {"-", ":-"}:
            return arg if unset else str(value)
        if op in {"?", ":?"}:
            if unset:
                raise MissingVariableError(f"{name}: {arg}")
            return str(value)
        if op in {"+", ":+"}:
            return "" if unset else arg
        return value or ""

    rest = _INTERPOLATION.sub(lambda m: "" if m["escaped"] else "x", value)
    assert "$" not in rest, f"unsupported interpolation in {value!r}"
    return _INTERPOLATION.sub(replace, value)


def interpolations(value: str) -> list[re.Match[str]]:
    return [m for m in _INTERPOLATION.finditer(value) if not m["escaped"]]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, list or mapping form, as raw (uninterpolated) strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def mounted_secrets(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `secrets:` as {file name under /run/secrets: top-level secret name}."""
    mounted: dict[str, str] = {}
    for entry in service.get("secrets") or []:
        if isinstance(entry, str):
            mounted[entry] = entry
        else:
            mounted[str(entry.get("target") or entry["source"])] = str(entry["source"])
    return mounted


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    """Dependency name → condition (`service_started` for the short list form)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def healthcheck_command(service: Mapping[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    return shlex.split(test) if isinstance(test, str) else [str(part) for part in test]


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def mongo_uri_parts(uri: str) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """Hosts and query options of a `mongodb://` URI (no credentials, no SRV)."""
    parts = urlsplit(uri)
    assert parts.scheme == "mongodb", uri
    hosts = [host_port(item) for item in parts.netloc.split(",")]
    options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    return hosts, options


def command_option(command: list[str], option: str) -> str | None:
    """The value of `--option V` or `--option=V` in an argv list."""
    for index, arg in enumerate(command):
        if arg == option and index + 1 < len(command):
            return command[index + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


@dataclass(frozen=True)
class Listener:
    name: str
    host: str
    port: int


def kafka_listeners(value: str) -> dict[str, Listener]:
    """`NAME://host:port,...` (Kafka's listeners / advertised.listeners) by listener name."""
    listeners: dict[str, Listener] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, _, address = item.partition("://")
        host, port = host_port(address)
        listeners[name] = Listener(name, host, port)
    return listeners


def published_ports(service: Mapping[str, Any]) -> list[tuple[str, int, int]]:
    """`[ip:]host:container` short-syntax port mappings as (ip, host port, container port)."""
    result = []
    for entry in service.get("ports") or []:
        parts = str(entry).split(":")
        assert len(parts) in {2, 3}, f"port {entry!r}: give the host port explicitly"
        ip = parts[0] if len(parts) == 3 else ""
        result.append((ip, int(parts[-2]), int(parts[-1].split("/")[0])))
    return result


# --- Dockerfile ----------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """`ENV k=v ...` (and the legacy `ENV k v`) of this stage, later values winning."""
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            words = shlex.split(args)
            if "=" not in words[0]:
                values[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                key, _, value = word.partition("=")
                values[key] = value
        return values


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continuation are ignored by Docker
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def dockerfile_stages(text: str) -> list[Stage]:
    """The build stages, `FROM ${ARG}` resolved with the global ARG defaults."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, args in dockerfile_instructions(text):
        if keyword == "FROM":
            words = args.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args[m[1]], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            key, _, default = args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) ENTRYPOINT/CMD; shell form is refused."""
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(item) for item in value]


# --- .dockerignore -------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out += "(?:.*/)?"
            index += 3
        elif pattern.startswith("**", index):
            out += ".*"
            index += 2
        elif pattern[index] == "*":
            out += "[^/]*"
            index += 1
        elif pattern[index] == "?":
            out += "[^/]"
            index += 1
        else:
            out += re.escape(pattern[index])
            index += 1
    return re.compile(out + r"\Z")


@dataclass(frozen=True)
class DockerIgnore:
    """The subset of .dockerignore matching the build uses: `*`, `?`, `**`, `!` re-includes."""

    rules: tuple[tuple[bool, re.Pattern[str]], ...]

    @classmethod
    def read(cls, path: Path = DOCKERIGNORE) -> DockerIgnore:
        rules = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            pattern = line.lstrip("!").strip().strip("/")
            assert "[" not in pattern, f"character classes are not supported here: {line}"
            rules.append((negated, _pattern_regex(pattern)))
        return cls(tuple(rules))

    @property
    def has_negations(self) -> bool:
        return any(negated for negated, _ in self.rules)

    def excludes(self, relative: str) -> bool:
        """Whether the build context leaves out this path (the last matching rule wins)."""
        parts = relative.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for negated, regex in self.rules:
            if any(regex.match(candidate) for candidate in candidates):
                excluded = not negated
        return excluded

    def context_files(self, root: Path = ROOT) -> list[str]:
        """Relative paths of the files `docker build root` would send."""
        files: list[str] = []
        prune = not self.has_negations  # without `!` rules an excluded dir stays excluded

        def walk(directory: Path) -> None:
            for entry in sorted(directory.iterdir()):
                relative = entry.relative_to(root).as_posix()
                if entry.is_dir() and not entry.is_symlink():
                    if prune and self.excludes(relative):
                        continue
                    walk(entry)
                elif not self.excludes(relative):
                    files.append(relative)

        walk(root)
        return files


def merge_compose(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`docker compose -f base -f override`, for the keys these overrides use: mappings
    (services, environment, healthcheck) merge key by key; anything else is replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_compose(merged[key], value)
        else:
            merged[key] = value
    return merged

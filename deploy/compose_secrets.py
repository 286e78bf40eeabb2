"""Generate the secret files compose.yaml mounts: `python3 deploy/compose_secrets.py`.

Writes `secrets/` next to compose.yaml (git- and docker-ignored): random passwords for
MongoDB, Kafka and Elasticsearch, MongoDB's replica-set keyFile, the services' MongoDB URI
(with its password) and Kafka's JAAS file, and the token signing secret. Existing files
are kept, so re-running never changes a password a running stack already uses.

The directory is 0700 (other host users cannot list or reach it); the files are 0644
because compose bind-mounts them as they are and the containers read them as their own
unprivileged users (the app's uid 10001, mongodb's 999, ...). Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Service names and users that compose.yaml and deploy/compose/*.js use.
MONGO_HOST = "mongo:27017"
MONGO_REPLICA_SET = "rs0"
MONGO_APP_USER = "outbox"
KAFKA_APP_USER = "outbox"


def _password() -> str:
    return secrets.token_hex(24)  # hex: safe in a URI and a JAAS string without escaping


def generate(directory: Path) -> dict[str, Path]:
    """Create the missing secret files in `directory`; return every file by name."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    files: dict[str, Path] = {}

    def ensure(name: str, make: Callable[[], str]) -> str:
        path = directory / name
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as file:
                file.write(make())
        files[name] = path
        return path.read_text()

    ensure("token_secret", lambda: secrets.token_hex(32))
    ensure("api_consistency_key", lambda: secrets.token_hex(32))
    ensure("mongo_root_password", _password)
    ensure("mongo_keyfile", lambda: base64.b64encode(secrets.token_bytes(756)).decode())
    mongo_password = ensure("mongo_outbox_password", _password)
    ensure(
        "mongo_uri",
        lambda: (
            f"mongodb://{MONGO_APP_USER}:{mongo_password}@{MONGO_HOST}/"
            f"?replicaSet={MONGO_REPLICA_SET}&authSource=admin"
        ),
    )
    kafka_password = ensure("kafka_password", _password)
    ensure(
        "kafka_server_jaas.conf",
        lambda: (
            "KafkaServer {\n"
            "  org.apache.kafka.common.security.plain.PlainLoginModule required\n"
            f'  user_{KAFKA_APP_USER}="{kafka_password}";\n'
            "};\n"
        ),
    )
    ensure("elastic_password", _password)
    ensure("es_outbox_password", _password)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", nargs="?", type=Path, default=ROOT / "secrets")
    directory = parser.parse_args().directory
    for name in generate(directory):
        print(directory / name)  # noqa: T201 - the command's output


if __name__ == "__main__":
    main()

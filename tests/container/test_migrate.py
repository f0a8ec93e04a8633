"""The built image as the Kubernetes init container (deploy/kubernetes/deployment.yaml): ``args: ["migrate"]`` with
the manifest's environment and the ConfigMap's config.toml, against the real PostgreSQL on 127.0.0.1:5432."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.container.buildah import USER_ID, VOLUME, image_command, run, working_container

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "/etc/nxp2-cds/config.toml"
MIGRATE_SECONDS = 120.0


def configmap_toml() -> str:
    """The ``config.toml`` block of deploy/kubernetes/configmap.yaml (a YAML literal block, indented)."""
    lines = (ROOT / "deploy" / "kubernetes" / "configmap.yaml").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "config.toml: |") + 1
    indent = len(lines[start]) - len(lines[start].lstrip())
    block: list[str] = []
    for line in lines[start:]:
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            break
        block.append(line[indent:])
    text = "\n".join(block) + "\n"
    assert "auth" in tomllib.loads(text)
    return text


def schema_revision(database_url: str) -> str | None:
    """The revision recorded in the database's ``alembic_version`` table, read by a connection of this test."""
    url = make_url(database_url)
    conninfo = f"host={url.host} port={url.port} user={url.username} dbname={url.database} connect_timeout=5"
    with psycopg.connect(conninfo) as connection:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


def test_migrate_init_container_brings_postgresql_to_the_newest_schema(
    image: str, postgres_url: str, tmp_path: Path
) -> None:
    """The image's ENTRYPOINT with ``args: ["migrate"]``, as uid 10001 with the Deployment's environment, config file
    and writable folders, upgrades an empty PostgreSQL database to the newest revision the image ships: exit 0, and
    the database records that revision afterwards."""
    config = tmp_path / "config.toml"
    config.write_text(configmap_toml(), encoding="utf-8")
    writable = {tmp_path / "data": VOLUME, tmp_path / "tmp": "/tmp"}
    for folder in writable:
        folder.mkdir()
        os.chown(folder, USER_ID, USER_ID)
    env = {
        "NXP2_CDS_CONFIG": CONFIG,
        "NXP2_CDS_DATABASE_URL": postgres_url,
        "NXP2_CDS_SERVER__WORKERS": "2",
        "NXP2_CDS_SERVER__THREADS": "4",
        "PROMETHEUS_MULTIPROC_DIR": "/tmp/nxp2-cds-metrics",
    }
    with working_container(image) as container:
        migrated = run(
            container,
            image_command(image, ["migrate"]),
            env=env,
            volumes={config: f"{CONFIG}:ro", **writable},
            timeout=MIGRATE_SECONDS,
        )
        assert migrated.returncode == 0, migrated.stderr
        head = run(
            container,
            ["python", "-c", "from cds_service.store.store import Store; print(Store.head_revision())"],
            timeout=MIGRATE_SECONDS,
        )
        assert head.returncode == 0, head.stderr
    newest = head.stdout.strip()
    assert newest
    assert f"schema at revision {newest} (newest)" in migrated.stdout
    assert schema_revision(postgres_url) == newest

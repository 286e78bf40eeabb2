"""A small `kustomize build` for the checks: the subset deploy/k8s uses, nothing more.

No kustomize binary here, and none on PyPI that builds without Go. This reads
kustomization.yaml files and applies, in kustomize's order: resources (files and
directories, recursively), patches (strategic-merge files for maps, JSON 6902 with a
target selected by kind and an anchored name regex), labels, images, namespace. A field it
does not implement fails the build instead of being ignored, so a manifest using more of
kustomize than this fails its test until this learns it.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

SUPPORTED = {"apiVersion", "kind", "resources", "patches", "labels", "images", "namespace"}


def build(directory: Path) -> list[Resource]:
    """The resources `kustomize build directory` would print."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    assert not unknown, f"{directory}: kustomization fields not supported here: {unknown}"
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources.extend(build(path))
        else:
            resources.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    for patch in kustomization.get("patches", []):
        _apply_patch(directory, patch, resources)
    for label in kustomization.get("labels", []):
        assert set(label) <= {"pairs", "includeSelectors"}, label
        assert label.get("includeSelectors", False) is False, "selector labels not supported"
        for resource in resources:
            resource.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for image in kustomization.get("images", []):
        assert set(image) <= {"name", "newTag", "newName"}, image
        for container in _containers(resources):
            name, _, _tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    if "namespace" in kustomization:
        for resource in resources:
            resource["metadata"]["namespace"] = kustomization["namespace"]
    return resources


def _apply_patch(directory: Path, patch: dict[str, Any], resources: list[Resource]) -> None:
    assert set(patch) <= {"path", "patch", "target"}, patch
    if "path" in patch:
        body = yaml.safe_load((directory / patch["path"]).read_text())
        target = {"kind": body["kind"], "name": body["metadata"]["name"]}
        matched = [r for r in resources if _matches(r, target)]
        assert matched, f"patch {patch['path']} matches nothing"
        assert body["kind"] == "ConfigMap", "strategic merge implemented for ConfigMaps only"
        for resource in matched:
            resource.setdefault("data", {}).update(body.get("data", {}))
        return
    operations = yaml.safe_load(patch["patch"])
    matched = [r for r in resources if _matches(r, patch["target"])]
    assert matched, f"patch target {patch['target']} matches nothing"
    for resource in matched:
        for operation in operations:
            _json6902(resource, operation)


def _matches(resource: Resource, target: dict[str, str]) -> bool:
    assert set(target) <= {"kind", "name"}, target
    if "kind" in target and resource["kind"] != target["kind"]:
        return False
    return "name" not in target or bool(re.fullmatch(target["name"], resource["metadata"]["name"]))


def _json6902(resource: Resource, operation: dict[str, Any]) -> None:
    assert operation["op"] in {"replace", "add"}, operation
    parts = operation["path"].split("/")[1:]
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in parts]
    node: Any = resource
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if operation["op"] == "replace":
        assert last in node, f"replace of a missing {operation['path']}"
    node[last] = copy.deepcopy(operation["value"])


def _containers(resources: list[Resource]) -> list[dict[str, Any]]:
    return [
        container
        for resource in resources
        if resource["kind"] in {"Deployment", "StatefulSet"}
        for container in resource["spec"]["template"]["spec"]["containers"]
    ]

"""What the control-plane IO managers keep under the Dagster instance's storage folder.

- An output manifest per asset (and partition): which outcomes the output holds, so that
  `load_input` can read exactly those back (from Postgres, or from the local store).
The local outcome store of DB-off runs (SQLite) is `gemantria_dag/control_plane/local_store.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from urllib.parse import quote

from dagster import DagsterInstance, InputContext, OutputContext, PartitionsDefinition, StaticPartitionsDefinition
from pydantic import BaseModel

from gemantria_dag.control_plane.records import EnrichmentBatch, NounEnrichment
from gemantria_dag.settings import Settings


def storage_root(settings: Settings, instance: DagsterInstance | None) -> Path:
    """`<instance storage>/control_plane`, or the project's state folder outside an instance."""
    base = Path(instance.storage_directory()) if instance is not None else settings.state_dir
    return base / "control_plane"


class KeyGroup(BaseModel):
    """Outcomes sharing (model, prompt_version, params_hash): the key of `gematria.noun_enrichment` minus the noun."""

    model: str
    prompt_version: str
    params_hash: str
    strong_ids: list[str]


class OutputManifest(BaseModel):
    groups: list[KeyGroup]

    @classmethod
    def of(cls, outcomes: Iterable[NounEnrichment]) -> OutputManifest:
        groups: dict[tuple[str, str, str], list[str]] = {}
        for o in outcomes:
            groups.setdefault((o.model, o.prompt_version, o.params_hash), []).append(o.strong_id)
        return cls(
            groups=[
                KeyGroup(model=m, prompt_version=p, params_hash=h, strong_ids=ids) for (m, p, h), ids in groups.items()
            ]
        )

    @property
    def size(self) -> int:
        return sum(len(g.strong_ids) for g in self.groups)


def _ordered(keys: Sequence[str], partitions_def: PartitionsDefinition | None) -> list[str]:
    """Partition keys in the definition's order (Dagster hands a range's keys in no set order)."""
    if isinstance(partitions_def, StaticPartitionsDefinition):
        rank = {key: i for i, key in enumerate(partitions_def.get_partition_keys())}
        return sorted(keys, key=lambda key: rank.get(key, len(rank)))
    return sorted(keys)  # time-window keys sort by their text; any other kind at least gets a stable order


def output_identifiers(context: OutputContext | InputContext) -> list[list[str]]:
    """One identifier per (asset, partition) the context covers; an input may span partitions."""
    if context.has_asset_key:
        path = list(context.asset_key.path)
        if context.has_asset_partitions:
            return [[*path, key] for key in _ordered(context.asset_partition_keys, context.asset_partitions_def)]
        return [path]
    return [list(context.get_identifier())]


class ManifestStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder / "outputs"

    def _path(self, identifier: Sequence[str]) -> Path:
        # Partition keys and asset names may hold '/' or odd characters: quote each part.
        parts = [quote(part, safe="") or "_" for part in identifier]
        return self.folder.joinpath(*parts[:-1], parts[-1] + ".json")

    def write(self, identifier: Sequence[str], manifest: OutputManifest) -> None:
        path = self._path(identifier)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".json.tmp")
        temp.write_text(manifest.model_dump_json())
        temp.replace(path)  # a reader sees the old manifest or the new one, never half of one

    def read(self, identifier: Sequence[str]) -> OutputManifest | None:
        path = self._path(identifier)
        return OutputManifest.model_validate_json(path.read_text()) if path.exists() else None


def _identity_label(identifier: Sequence[str]) -> str:
    return "/".join(identifier)


def record_output(manifests: ManifestStore, context: OutputContext, batch: EnrichmentBatch) -> None:
    """Remember which outcomes (new and reused) this output holds, per partition, for `load_input`."""
    identifiers = output_identifiers(context)
    outcomes = batch.all_enrichments
    if len(identifiers) == 1:
        manifests.write(identifiers[0], OutputManifest.of(outcomes))
        return
    # One run for several partitions (a single-run backfill): file each outcome under the partition
    # its call record names; one without (reused from an earlier run) goes under each partition.
    keys = {identifier[-1] for identifier in identifiers}
    partition_of = {r.id: r.args.partition for r in batch.records if r.args.partition in keys}

    def home(outcome: NounEnrichment) -> str | None:
        return partition_of.get(outcome.record_id) if outcome.record_id is not None else None

    for identifier in identifiers:
        manifests.write(identifier, OutputManifest.of(o for o in outcomes if home(o) in (identifier[-1], None)))


def load_outputs(
    manifests: ManifestStore,
    context: InputContext,
    fetch: Callable[[KeyGroup], dict[str, NounEnrichment]],
    *,
    missing_hint: Callable[[], str],
) -> list[NounEnrichment]:
    """The outcomes the upstream output(s) held, in their original order, read through `fetch`."""
    loaded: list[NounEnrichment] = []
    seen: set[tuple[str, str, str, str]] = set()  # partitions of one run may share reused outcomes
    for identifier in output_identifiers(context):
        manifest = manifests.read(identifier)
        if manifest is None:
            raise FileNotFoundError(
                f"no stored output for {_identity_label(identifier)} in this Dagster instance: materialize it first"
            )
        for group in manifest.groups:
            found = fetch(group)
            missing = [sid for sid in group.strong_ids if sid not in found]
            if missing:
                raise LookupError(
                    f"{len(missing)} of {len(group.strong_ids)} outcomes of {_identity_label(identifier)} "
                    f"(model {group.model!r}, prompt {group.prompt_version!r}) not found, e.g. {missing[:3]}: "
                    f"{missing_hint()}"
                )
            for sid in group.strong_ids:
                key = (sid, group.model, group.prompt_version, group.params_hash)
                if key not in seen:
                    seen.add(key)
                    loaded.append(found[sid])
    return loaded

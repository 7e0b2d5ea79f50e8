"""The start-up "prepare" step of `python3 app.py` (and `--prepare-only`, run before gunicorn): the catalogue
index the demo serves first is extracted when missing, and extracted again when it has no checksums (an
older extraction) or is damaged; the other feature folders the server would load without checksums are listed
with the command that extracts each again, or extracted again when asked (`--reextract-unverified`).

Re-extraction is cir.extraction's: the new files are written beside the old ones (shards under .partial/) and
replace them, each by an atomic rename, only once all are complete, so an interrupted run leaves the old
folder as it was (and the next run resumes). A server already running keeps answering from what it loaded;
its health reports the files changed on disk until it is restarted.
"""
from __future__ import annotations

import logging
from pathlib import Path

from cir import encoders
from cir.encoders import Encoder
from cir.extraction import IndexStore, extract_index, index_name, open_dataset_index, reextract_reason
from cir.index.files import reextract_command
from cir.serving.datasets import DatasetSource, dataset_sources, of_encoder, records_for
from cir.serving.settings import Settings

log = logging.getLogger("app")

REEXTRACT_FLAG = "--reextract-unverified"   # the dev server's flag (cir.cli.serve), named in the warnings


def prepare(settings: Settings, reextract_unverified: bool = False) -> None:
    """The catalogue index ready and verified (ensure_catalog), then the other folders without checksums
    warned about, or extracted again with `reextract_unverified`."""
    catalogue = ensure_catalog(settings)
    unverified = unverified_folders(settings, served_encoder(settings), skip=catalogue)
    if reextract_unverified:
        reextract_all(unverified, served_encoder(settings), settings.data_root)
    elif unverified:
        warn_unverified(unverified)


def served_encoder(settings: Settings) -> Encoder:
    """The encoder the server runs, loaded once into `settings` (create_app then uses that one)."""
    if settings.encoder_obj is None:
        settings.encoder_obj = encoders.load(settings.encoder, settings.device, text=settings.stage1)
    return settings.encoder_obj


def ensure_catalog(settings: Settings) -> Path:
    """Extract the whole catalogue's features (features/catalog-all) unless they are up to date; extract them
    again when the folder has no checksums or is damaged (checked in full: tens of ms for the catalogue).
    Returns the folder."""
    store = IndexStore(Path(settings.features_root))
    folder = store.root / index_name("catalog", "all")
    # This folder is the one app.py creates and serves first: redoing it costs about two minutes once, and
    # serving it unverified (or not at all) would last until someone reads the warning.
    problem = reextract_reason(folder)
    if problem:
        log.warning("the catalogue index %s is extracted again (a few minutes), its old files kept until the "
                    "new ones are complete: %s", folder, problem)
    else:
        log.info("checking the catalogue index %s (extracting it takes about two minutes the first time)", folder)
    found = open_dataset_index(served_encoder(settings), "catalog", "all", store, settings.data_root,
                               redo=bool(problem))
    if problem:
        log.info("extracted the catalogue index %s again: %d images, checksums recorded and verified", folder,
                 len(found.index))
    return folder


def unverified_folders(settings: Settings, encoder: Encoder, skip: Path | None = None
                       ) -> list[tuple[DatasetSource, str]]:
    """The folders the server would load with this encoder whose manifest records no checksums, with why
    (`skip`: a folder already seen to). Only the manifests are read: a folder with checksums is verified when
    the server loads it, and its damage is reported then (health, or the start-up error)."""
    sources, _ = dataset_sources(Path(settings.features_root), settings.datasets_file)
    done = skip.resolve() if skip is not None else None
    found = []
    for source in sources:
        if source.features.resolve() == done or not of_encoder(source, encoder):
            continue
        reason = reextract_reason(source.features, verify=False)
        if reason:
            found.append((source, reason))
    return found


def command_for(source: DatasetSource) -> str:
    """The command that extracts `source`'s folder again; when that command would write another folder (the
    folder was renamed, or listed under another name in a datasets file), also how to redo this one."""
    command = reextract_command(source.features, source.manifest)
    named = index_name(source.dataset, source.split, source.category, source.data_root)
    if named != source.features.name:
        command += (f"   (it writes {source.features.parent / named}; `python3 app.py {REEXTRACT_FLAG}` "
                    f"rewrites {source.features} itself)")
    return command


def warn_unverified(found: list[tuple[DatasetSource, str]]) -> None:
    """One warning listing each folder, why, and the command that extracts it again. They are not extracted
    here: a FashionIQ or CIRR split can take many minutes, which a server start must not spend unasked."""
    lines = "".join(f"\n  {source.features}: {reason}\n    {command_for(source)}" for source, reason in found)
    log.warning("%d feature folder(s) will be served unverified (damaged or altered files would go unnoticed); "
                "extract each again with its command below, or start with %s to extract them all now:%s",
                len(found), REEXTRACT_FLAG, lines)


def reextract_all(found: list[tuple[DatasetSource, str]], encoder: Encoder, data_root: str | None) -> None:
    """Extract each folder again in place, from the images its manifest records (or `data_root`, as the server
    reads them). A folder that fails is logged and the others are still done; then ValueError names the
    failures (the operator asked for them: a start that silently skipped one would look like success)."""
    failed = []
    for source, reason in found:
        log.warning("extracting %s again (%s)", source.features, reason)
        try:
            records, root = records_for(source, data_root)
            info = {"dataset": source.dataset, "split": source.split, "data_root": str(root),
                    **({"category": source.category} if source.category else {})}
            res = extract_index(records, encoder, source.features, redo=True, info=info)
        except (OSError, ValueError) as e:   # missing images, a folder held by another extraction ...
            log.error("could not extract %s again: %s", source.features, e)
            failed.append(f"\n  {source.features}: {e}")
            continue
        log.info("extracted %s again: %d images (%d skipped) in %.1f s, checksums recorded", res.out_dir,
                 res.count, len(res.skipped), res.seconds)
    if failed:
        raise ValueError(f"{len(failed)} of {len(found)} feature folder(s) could not be extracted again "
                         f"(they are left as they were):{''.join(failed)}")

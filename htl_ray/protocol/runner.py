"""Running the protocol: every setting's sweep and confirmation runs, then every setting's
ablations, resumable across sittings, with the results page regenerated after each run and,
with an archive, every run that ended written to it."""

from __future__ import annotations

import contextlib
import logging
import shlex
from pathlib import Path

from htl_ray.errors import UserError
from htl_ray.protocol.external import check_externals, score_externals
from htl_ray.protocol.page import results_markdown, write_results
from htl_ray.protocol.status import groups, setting_status
from htl_ray.tune.reuse import import_reused
from htl_ray.tune.space import load_sweep
from htl_ray.tune.sweep import STATE_FILE, run_sweep

logger = logging.getLogger(__name__)


def run_protocol(sweep_files: list[str | Path], *, seeds: int, results: str | Path,
                 report_only: bool = False, overrides: list[str] | None = None,
                 archive: str | Path | None = None, archive_every_s: float = 120.0,
                 ablate: bool = True, block: str | None = None,
                 externals: list[str | Path] | None = None) -> bool:
    """Run (or continue) every setting's sweep and confirmation runs, regenerating the results
    page after each; then, with `ablate`, every setting's ablations (val only: after all the
    verdict's runs, which matter more). Returns whether the protocol is complete. With
    `archive`, the finished
    runs it holds are first imported into MLflow (from an earlier sitting on another machine)
    and every run that ended is written to it (`htl_ray.archive`), every `archive_every_s`
    seconds while the protocol trains and after each confirmation run: commit it to keep
    them. With `block`, the page's block of that name is written (a later round beside the
    first). With `externals` (test-only datasets), every confirmation run trained here is also
    scored on each (`htl_ray.protocol.external`), and the page shows its per-group effects
    there too."""
    from htl_ray import tracking
    from htl_ray.archive import PeriodicExport, export_sweep, import_sweep

    if seeds < 1:
        raise UserError(f"--seeds: expected at least 1, got {seeds}")
    sweeps = [load_sweep(f, overrides) for f in sweep_files]   # every file checked first
    external = check_externals(list(externals or []), sweeps=sweeps)
    names = [s.settings.name for s in sweeps]
    if len(set(names)) < len(names):
        raise UserError(f"sweep names must differ across the protocol, got {names}")
    uri = tracking.resolve_tracking_uri(sweeps[0].base.tracking.uri)
    command = " ".join(["htl-ray reproduce", *map(str, sweep_files), f"--seeds {seeds}",
                        f"--results {results}", *([] if ablate else ["--no-ablations"]),
                        *(f"--set {shlex.quote(o)}" for o in overrides or []),
                        *([f"--block {block}"] if block else []),
                        *(f"--external {p}" for p in externals or [])])
    results = Path(results)
    archive = Path(archive) if archive is not None else None
    if archive is not None:
        command += f" --archive {archive}"
        for sweep in sweeps:
            import_sweep(sweep, uri, archive)
    for sweep in sweeps:               # an earlier round's runs that this one counts (`reuse:`)
        import_reused(sweep, uri)

    def score_external() -> None:
        """Every finished confirmation run on each --external dataset; an evaluation that
        fails is named and the protocol goes on (the next refresh tries it again)."""
        try:
            scored = score_externals(sweeps, external)
        except Exception as exc:  # noqa: BLE001
            logger.warning(f"[htl-ray] reproduce: could not score the confirmation runs on "
                           f"--external {', '.join(map(str, external.values()))} (runs go on; "
                           f"tried again after the next run): {exc}")
            return
        if scored and archive is not None:
            for sweep in sweeps:       # their external scores, kept too
                export_sweep(sweep, uri, archive)

    def refresh() -> bool:
        if archive is not None:        # first: the runs matter more than the page
            for sweep in sweeps:
                export_sweep(sweep, uri, archive)
        text, complete = results_markdown(
            sweeps, uri=uri, seeds=seeds, command=command, ablate=ablate,
            **({"title": f"Reproduction protocol, {block}"} if block else {}))
        write_results(results, text, name=block)
        logger.info(f"[htl-ray] reproduce: results written to {results}")
        return complete

    def refresh_between_runs() -> None:
        """After each confirmation run, so the page follows a protocol that takes hours; a page
        that cannot be written must not stop the runs (the final rewrite reports it)."""
        score_external()
        try:
            refresh()
        except Exception as exc:  # noqa: BLE001
            logger.warning(f"[htl-ray] reproduce: could not rewrite {results} (runs go on): "
                           f"{exc}")

    if report_only:                    # scores on --external datasets too: nothing trains
        score_external()
        return refresh()
    complete = False
    exporting = (PeriodicExport(sweeps, uri, archive, archive_every_s)
                 if archive is not None else contextlib.nullcontext())
    try:
        with exporting:
            for sweep in sweeps:
                status = setting_status(sweep, uri)
                n_seeds = sweep.confirm_seeds(seeds)
                if status.complete(groups(sweep, status.best_params), n_seeds):
                    logger.info(f"[htl-ray] reproduce: {sweep.settings.name} complete, skipped")
                    continue
                resume = (sweep.directory / STATE_FILE).is_file()
                logger.info(f"[htl-ray] reproduce: {sweep.settings.name} "
                            f"({'continuing' if resume else 'starting'}; "
                            f"{sweep.base.supervision.setting} setting, "
                            f"{sweep.settings.num_samples} trials, then "
                            f"{len(groups(sweep, status.best_params))} × {n_seeds} "
                            "confirmation runs)")
                outcome = run_sweep(sweep, resume=resume, confirm=n_seeds,
                                    on_confirmed=refresh_between_runs)
                if outcome.interrupted:
                    logger.info("[htl-ray] reproduce: interrupted; run the same command to "
                                "continue")
                    return False
            for sweep in sweeps if ablate else []:
                if setting_status(sweep, uri).ablations_complete(sweep):
                    continue
                logger.info(f"[htl-ray] reproduce: {sweep.settings.name} ablations "
                            f"({', '.join(sweep.ablations)}; val only)")
                outcome = run_sweep(sweep, resume=True, confirm=sweep.confirm_seeds(seeds),
                                    ablate=True,
                                    on_confirmed=refresh_between_runs)
                if outcome.interrupted:
                    logger.info("[htl-ray] reproduce: interrupted; run the same command to "
                                "continue")
                    return False
        score_external()               # after the last run: not after a stop or a failure
    finally:
        # also when stopped or failed part-way: the page shows everything finished so far
        try:
            complete = refresh()
        except Exception as exc:  # noqa: BLE001 - never hide the error that stopped the run
            logger.warning(f"[htl-ray] reproduce: could not rewrite {results}: {exc}")
    return complete

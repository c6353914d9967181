"""The model steps of the label-transfer pipeline (cuts, cleanup, train, validate, infer,
catalogue, evaluate): from the cross-matched reference set to the transferred-label catalogue.
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr
from astropy.table import MaskedColumn, Table

from bayescannon.errors import InsufficientDataError
from bayescannon.io import read_labels, read_spectra
from bayescannon.model import CannonModel
from bayescannon.survey.catalogue import build_catalogue, join_ids, write_table
from bayescannon.survey.cleanup import clean_reference_set
from bayescannon.survey.reference import QualityCuts, apply_cuts
from bayescannon.survey.transferconfig import (
    _EXCLUDED_NAMES,
    _FAILED_FIT,
    _as_float,
    _excluded_table,
    _write_json,
    _write_netcdf,
)
from bayescannon.survey.transferevaluate import _nanmean, _nanstd, evaluate
from bayescannon.survey.transferrecipes import bootstrap_cross_validated, preselect
from bayescannon.validate.crossval import cross_validate

logger = logging.getLogger(__name__)


class _ModelSteps:
    """The model steps of :class:`~bayescannon.survey.transfer.TransferPipeline`: quality cuts,
    clean-up of the reference set, training, validation, inference, the catalogue and the
    evaluation against a truth table.

    A mixin: it relies on the pipeline's ``config``, ``output``, bookkeeping methods and
    on ``_select``/``_load_preprocessed`` of the data steps."""

    def _model_template(self):

        tr = self.config.data["train"]
        return CannonModel(
            self.config.label_names,
            int(tr["order"]),
            regularization=float(tr["regularization"]),
            random_state=int(self.config.data["seed"]),
        )

    def _labels_of(self, table: Table) -> np.ndarray:
        return np.column_stack([_as_float(table[f"REF_{n}"]) for n in self.config.label_names])

    # ---------------------------------------------------------------- step: cuts
    def _step_cuts(self) -> dict:

        self.manifest("crossmatch")
        matched = self._read_table("crossmatch", "matched.fits")
        spec = dict(self.config.data["cuts"])
        req = list(spec.get("require_finite", []))
        req += [f"REF_{n}" for n in self.config.label_names if f"REF_{n}" not in req]
        spec["require_finite"] = req
        cuts = QualityCuts.from_dict(spec)
        kept, excluded = apply_cuts(matched, cuts)
        rows = [(str(r["ID"]), "", "cuts", True, str(r["reason"])) for r in excluded]
        self._write_excluded("cuts", rows)
        write_table(kept, self.step_dir("cuts") / "reference.fits", overwrite=True)
        _write_json(self.step_dir("cuts") / "cuts.json", cuts.to_dict())
        if rows:
            logger.warning(
                "cuts: %d of %d matched star(s) fail the quality cuts; first: %s: %s",
                len(rows),
                len(matched),
                rows[0][0],
                rows[0][4],
            )
        if len(kept) == 0:
            raise InsufficientDataError(
                f"no star of the {len(matched)} cross-matched ones passes the quality cuts "
                f"(see {self.step_dir('cuts') / 'excluded.fits'})"
            )
        return {"n_in": len(matched), "n_kept": len(kept), "n_excluded": len(rows)}

    # ---------------------------------------------------------------- step: cleanup
    def _step_cleanup(self) -> dict:

        self.manifest("cuts")
        ref = self._read_table("cuts", "reference.fits")
        cfg = self.config.data["cleanup"]
        seed = int(self.config.data["seed"])
        n = len(ref)
        frac = float(self.config.data["train"]["holdout_fraction"])
        rng = np.random.default_rng(seed)
        n_hold = int(round(frac * n))
        hold = np.zeros(n, bool)
        hold[rng.permutation(n)[:n_hold]] = True
        keep_cols = ["ID", "REF_ID"] + [c for c in ref.colnames if c.startswith("REF_") and c != "REF_ID"]
        holdout = ref[hold][keep_cols]
        candidates = ref[~hold]
        rows: list[tuple] = []
        history = Table()
        if cfg["enabled"]:
            ds = self._select(self._load_preprocessed(), np.asarray(candidates["ID"]).astype(str))
            result = clean_reference_set(
                self._model_template(),
                np.asarray(ds["flux"].values),
                np.asarray(ds["ivar"].values),
                self._labels_of(candidates),
                ids=np.asarray(ds["star"].values).astype(str),
                wavelength=np.asarray(ds["wavelength"].values),
                n_sigma=float(cfg["n_sigma"]),
                max_iter=int(cfg["max_iter"]),
                mode=cfg["mode"],
                n_folds=int(cfg["n_folds"]),
                scatter=cfg["scatter"],
                random_state=seed,
                n_jobs=int(self.config.data["validate"]["n_jobs"]),
            )
            training = candidates[result.kept][keep_cols]
            rows = [(str(r["ID"]), "", "cleanup", True, str(r["REASON"])) for r in result.excluded]
            write_table(result.excluded, self.step_dir("cleanup") / "cleanup_details.fits", overwrite=True)
            history = result.history
            write_table(history, self.step_dir("cleanup") / "history.fits", overwrite=True)
            if rows:
                logger.warning(
                    "cleanup: %d reference star(s) dropped; first: %s: %s", len(rows), rows[0][0], rows[0][4]
                )
        else:
            training = candidates[keep_cols]
        self._write_excluded("cleanup", rows)
        write_table(training, self.step_dir("cleanup") / "training_set.fits", overwrite=True)
        write_table(holdout, self.step_dir("cleanup") / "holdout.fits", overwrite=True)
        return {
            "n_reference": n,
            "n_holdout": int(hold.sum()),
            "n_training": len(training),
            "n_dropped": len(rows),
            "n_iterations": len(history),
        }

    # ---------------------------------------------------------------- step: train
    def _step_train(self) -> dict:
        self.manifest("cleanup")
        training = self._read_table("cleanup", "training_set.fits")
        ds = self._select(self._load_preprocessed(), np.asarray(training["ID"]).astype(str))
        model = self._model_template()
        model.fit(
            np.asarray(ds["flux"].values),
            np.asarray(ds["ivar"].values),
            self._labels_of(training),
            wavelength=np.asarray(ds["wavelength"].values),
            ids=np.asarray(ds["star"].values).astype(str),
        )
        path = model.save(self.step_dir("train") / "model.nc", overwrite=True)  # a rerun step redoes its file
        return {
            "model": str(path),
            "n_training": int(model.n_training_stars_),
            "n_pixels": int(model.theta_.shape[0]),
            "n_flagged_pixels": int((model.pixel_flags_ != 0).sum()),
            "training_hash": model.training_hash_,
        }

    # ---------------------------------------------------------------- step: validate
    def _step_validate(self) -> dict:

        self.manifest("cleanup")
        cfg = self.config.data["validate"]
        if not cfg["enabled"]:
            return {"skipped": True}
        training = self._read_table("cleanup", "training_set.fits")
        ds = self._select(self._load_preprocessed(), np.asarray(training["ID"]).astype(str))
        snr_col = self.config.data["cuts"].get("snr_column", "snr")
        snr = np.asarray(ds[snr_col].values, dtype=float) if snr_col in ds else np.asarray(ds["snr_pixels"].values)
        cv = cross_validate(
            self._model_template(),
            np.asarray(ds["flux"].values),
            np.asarray(ds["ivar"].values),
            self._labels_of(training),
            n_folds=int(cfg["n_folds"]),
            random_state=int(self.config.data["seed"]),
            snr=snr,
            ids=np.asarray(ds["star"].values).astype(str),
            wavelength=np.asarray(ds["wavelength"].values),
            n_jobs=int(cfg["n_jobs"]),
        )
        write_table(cv.to_table(), self.step_dir("validate") / "cross_validation.fits", overwrite=True)
        summary = cv.summary
        write_table(summary, self.step_dir("validate") / "summary.fits", overwrite=True)
        stats = {str(r["LABEL"]): {"bias": float(r["BIAS"]), "rms": float(r["RMS"]), "n": int(r["N"])} for r in summary}
        for name, s in stats.items():
            logger.info("validate: %s bias %.4g, scatter %.4g (%d stars)", name, s["bias"], s["rms"], s["n"])
        return {"n_folds": int(cfg["n_folds"]), "statistics": stats}

    # ---------------------------------------------------------------- step: infer
    def _step_infer(self) -> dict:

        self.manifest("train")
        model = CannonModel.load(self.step_dir("train") / "model.nc")
        ds = self._load_preprocessed()
        ds, pre_info = self._preselect(ds)
        cfg = self.config.data["infer"]
        result = model.infer(ds, n_starts=cfg["n_starts"], chunk_size=int(cfg["chunk_size"]))
        _write_netcdf(result, self.step_dir("infer") / "labels.nc")
        flags = np.asarray(result["flags"].values)
        n_failed = int(((flags & _FAILED_FIT) != 0).sum())
        if n_failed:
            bad = np.asarray(result["star"].values)[(flags & _FAILED_FIT) != 0]
            logger.warning(
                "infer: %d star(s) without reliable labels (no pixels / not converged): %s",
                n_failed,
                ", ".join(map(str, bad[:5])),
            )
        return {
            "n_stars": int(result.sizes["star"]),
            "n_failed": n_failed,
            "n_flagged": int((flags != 0).sum()),
            "preselect": pre_info,
        }

    def _preselect(self, ds: xr.Dataset) -> tuple[xr.Dataset, dict]:
        """Ho+2017 pre-selection (:func:`~bayescannon.survey.transferrecipes.preselect`) of the
        stars to label on the target survey's own pipeline labels; writes ``preselection.fits``
        and the dropped stars to the infer step's ``excluded.fits``."""
        cfg = self.config.data["preselect"]
        self._write_excluded("infer", [])
        if not cfg["enabled"]:
            return ds, {"enabled": False}
        tname = self.config.data["target"]["name"]
        targets = self._read_table("crossmatch", "targets.fits")
        cols = [f"{tname}_{n}" for n in self.config.label_names if f"{tname}_{n}" in targets.colnames]
        if not cols:
            why = f"no pipeline labels of {tname} ([target] catalogue and labels) to test the stars on"
            logger.warning("preselect: skipped: %s; every star is labelled", why)
            return ds, {"enabled": True, "skipped": why}
        t_ids = np.asarray(targets["ID"]).astype(str)
        t_lab = np.column_stack([_as_float(targets[c]) for c in cols])
        train_ids = np.asarray(self._read_table("cleanup", "training_set.fits")["ID"]).astype(str)
        ids = np.asarray(ds["star"].values).astype(str)
        rows, hit = join_ids(ids, t_ids, what=f"the {tname} pipeline labels", require="none")
        lab = np.where(hit[:, None], t_lab[np.maximum(rows, 0)], np.nan)
        tr_rows, tr_hit = join_ids(train_ids, t_ids, what=f"the {tname} pipeline labels", require="none")
        selected, distance = preselect(
            lab,
            t_lab[tr_rows[tr_hit]],
            cut=float(cfg["cut"]),
            n_neighbours=int(cfg["n_neighbours"]),
        )
        table = Table()
        table["ID"] = ids
        table["PRESELECT_DISTANCE"] = MaskedColumn(distance, mask=~np.isfinite(distance))
        table["PRESELECTED"] = selected
        table.meta["CUT"] = float(cfg["cut"])
        table.meta["LABELS"] = ",".join(cols)
        write_table(table, self.step_dir("infer") / "preselection.fits", overwrite=True)
        cut = float(cfg["cut"])
        rows_ex = [
            (
                i,
                "",
                "infer",
                False,
                f"pre-selection: {tname} pipeline labels at distance {d:.2f} > {cut:g} from the training set's",
            )
            for i, d in zip(ids[~selected], distance[~selected])
        ]
        self._write_excluded("infer", rows_ex)
        n_untested = int((~np.isfinite(distance)).sum())
        logger.info(
            "preselect: %d of %d star(s) beyond %.3g of the training set on their %s labels are not labelled%s",
            len(rows_ex),
            ids.size,
            cut,
            tname,
            f"; {n_untested} without {tname} labels kept untested" if n_untested else "",
        )
        return ds.isel(star=np.flatnonzero(selected)), {
            "enabled": True,
            "cut": cut,
            "labels": cols,
            "n_in": int(ids.size),
            "n_dropped": len(rows_ex),
            "n_untested": n_untested,
        }

    # ---------------------------------------------------------------- step: bootstrap
    def _step_bootstrap(self) -> dict:
        """Ho+2017 bootstrap (:func:`~bayescannon.survey.transferrecipes.bootstrap_cross_validated`)
        of the labelled stars: ``bootstrap.fits`` (per-star ``e_BOOT_*``) and
        ``bootstrap_models.fits`` (per-model CV scatter)."""
        self.manifest("infer")
        cfg = self.config.data["bootstrap"]
        if not cfg["enabled"]:
            _write_json(self.step_dir("bootstrap") / "skipped.json", {"enabled": False})
            return {"skipped": True}
        training = self._read_table("cleanup", "training_set.fits")
        all_ds = self._load_preprocessed()
        ref = self._select(all_ds, np.asarray(training["ID"]).astype(str))
        result = xr.load_dataset(self.step_dir("infer") / "labels.nc", engine="h5netcdf")
        ids = np.asarray(result["star"].values).astype(str)
        tgt = self._select(all_ds, ids)
        n_folds = cfg["n_folds"] if cfg["n_folds"] is not None else self.config.data["validate"]["n_folds"]
        boot = bootstrap_cross_validated(
            self._model_template(),
            np.asarray(ref["flux"].values),
            np.asarray(ref["ivar"].values),
            self._labels_of(training),
            test_flux=np.asarray(tgt["flux"].values),
            test_ivar=np.asarray(tgt["ivar"].values),
            test_ids=ids,
            n_models=int(cfg["n_models"]),
            n_folds=int(n_folds),
            random_state=int(self.config.data["seed"]),
            wavelength=np.asarray(ref["wavelength"].values),
            n_jobs=int(self.config.data["validate"]["n_jobs"]),
            chunk_size=int(self.config.data["infer"]["chunk_size"]),
        )
        write_table(boot.star_table(), self.step_dir("bootstrap") / "bootstrap.fits", overwrite=True)
        models = boot.model_table()
        write_table(models, self.step_dir("bootstrap") / "bootstrap_models.fits", overwrite=True)
        med = np.nanmedian(boot.std, axis=0)
        stats = {
            n: {
                "median_e_boot": float(med[k]),
                "cv_scatter_median": float(np.nanmedian(boot.cv_scatter[:, k])),
                "cv_scatter_spread": float(np.nanstd(boot.cv_scatter[:, k], ddof=1)),
            }
            for k, n in enumerate(boot.label_names)
        }
        return {"n_models": boot.n_models, "n_folds": int(n_folds), "n_stars": int(ids.size), "statistics": stats}

    # ---------------------------------------------------------------- step: catalogue
    def _all_excluded(self) -> Table:
        parts = []
        for step in ("read", "preprocess", "crossmatch", "cuts", "cleanup", "infer"):
            path = self.step_dir(step) / "excluded.fits"
            if path.is_file():
                parts.append(Table.read(path))
        if not parts:
            return _excluded_table([])
        rows = []
        for p in parts:
            for r in p:
                rows.append(tuple(str(r[c]) if c != "LABELLED" else bool(r[c]) for c in _EXCLUDED_NAMES))
        return _excluded_table(rows)

    def _build_catalogue(self) -> tuple[Table, Table]:
        """Build the transferred-label catalogue and the table of excluded files and stars.

        The one place where the transfer pipeline assembles its catalogue from the saved
        steps: the inferred labels (``infer``), positions and S/N (``preprocess``), the
        survey's own labels (``crossmatch`` targets), the reference labels and the role
        of each star in the reference set (``crossmatch``, ``cuts``, ``cleanup``).

        Returns
        -------
        catalogue : astropy.table.Table
            One row per labelled star; ``IN_TRAINING`` and ``REFERENCE_STATUS`` give its
            role in the reference set.
        excluded : astropy.table.Table
            Every file and star skipped or excluded by any step, with the step and reason.
        """

        self.manifest("infer")
        result = xr.load_dataset(self.step_dir("infer") / "labels.nc", engine="h5netcdf")
        model = CannonModel.load(self.step_dir("train") / "model.nc")
        ids = np.asarray(result["star"].values).astype(str)
        ds = self._select(read_spectra(self.step_dir("preprocess") / "spectra.nc"), ids)
        tgt = self.config.data["target"]
        ref_cfg = self.config.data["reference"]
        tname, rname = tgt["name"], ref_cfg["name"]
        # the label-distance unit: the cross-validated scatter of the validate step
        cv_scatter = None
        summary_path = self.step_dir("validate") / "summary.fits"
        if summary_path.is_file():
            summary = Table.read(summary_path)
            rms = {str(r["LABEL"]): float(r["RMS"]) for r in summary}
            if all(n in rms for n in self.config.label_names):
                cv_scatter = np.array([rms[n] for n in self.config.label_names])
        # survey Y's own labels, joined by star id inside the builder
        targets = self._read_table("crossmatch", "targets.fits")
        own = [f"{tname}_{n}" for n in self.config.label_names if f"{tname}_{n}" in targets.colnames]
        survey = Table({"ID": np.asarray(targets["ID"]).astype(str)})
        for col in own:
            survey[col[len(tname) + 1 :]] = _as_float(targets[col])
        training = np.asarray(self._read_table("cleanup", "training_set.fits")["ID"]).astype(str)
        table = build_catalogue(
            model,
            result,
            spectra=ds,
            cv_scatter=cv_scatter,
            survey_labels=survey if own else None,
            survey_name=tname,
            survey_id_column="ID",
            training_ids=training,
            uncertainty="formal" if "half_width_68" not in result else "auto",
            config={"transfer": self.config.data},
            meta={"PIPELINE": "bayescannon transfer"},
        )
        for col, name in ((tgt["ra_column"], "RA"), (tgt["dec_column"], "DEC")):
            if col in ds and name not in table.colnames:
                vals = np.asarray(ds[col].values, dtype=float)
                table[name] = MaskedColumn(vals, mask=~np.isfinite(vals), unit="deg")
        for col in ("snr_g", "snr", "snr_pixels", "source_file"):
            if col in ds and col.upper() not in table.colnames:
                table[col.upper()] = np.asarray(ds[col].values)
        # reference labels and the role of every star in the reference set
        matched = self._read_table("crossmatch", "matched.fits")
        rows, hit = join_ids(ids, matched["ID"], what=f"the {rname} cross-match", require="none")
        m_rows = np.where(hit, rows, -1)
        ref_id = np.where(hit, np.asarray(matched["REF_ID"]).astype(str)[rows], "")
        table[f"{rname}_ID"] = ref_id
        for n in self.config.label_names:
            vals = np.where(m_rows >= 0, _as_float(matched[f"REF_{n}"])[np.maximum(m_rows, 0)], np.nan)
            table[f"{rname}_{n}"] = MaskedColumn(
                vals, mask=~np.isfinite(vals), description=f"{n} from the {rname} catalogue"
            )
        status = np.where(m_rows >= 0, "reference candidate", f"not in the {rname} catalogue").astype(object)
        excluded = self._all_excluded()
        for r in excluded:
            if r["STEP"] in ("crossmatch", "cuts", "cleanup"):
                pos = np.flatnonzero(ids == str(r["ID"]))
                for p in pos:
                    status[p] = f"excluded ({r['STEP']}): {r['REASON']}"
        training = set(np.asarray(self._read_table("cleanup", "training_set.fits")["ID"]).astype(str))
        holdout = set(np.asarray(self._read_table("cleanup", "holdout.fits")["ID"]).astype(str))
        in_train = np.isin(ids, np.asarray(sorted(training)))
        in_hold = np.isin(ids, np.asarray(sorted(holdout)))
        status[in_train] = "training"
        status[in_hold] = "holdout"
        table["IN_TRAINING"] = in_train
        table["REFERENCE_STATUS"] = np.asarray(status, dtype=str)
        boot_path = self.step_dir("bootstrap") / "bootstrap.fits"
        if self.config.data["bootstrap"]["enabled"] and boot_path.is_file():
            self.manifest("bootstrap")
            boot = Table.read(boot_path)
            b_rows, b_hit = join_ids(ids, boot["ID"], what="the bootstrap errors", require="none")
            for n in self.config.label_names:
                vals = _as_float(boot[f"e_BOOT_{n}"])[np.maximum(b_rows, 0)]
                vals = np.where(b_hit, vals, np.nan)
                table[f"e_BOOT_{n}"] = MaskedColumn(
                    vals,
                    mask=~np.isfinite(vals),
                    unit=table[n].unit,
                    description=f"{n}: spread over the bootstrap models (Ho+2017)",
                )
            table.meta["NBOOT"] = int(self.config.data["bootstrap"]["n_models"])
        table.meta["REFNAME"] = rname
        table.meta["TGTNAME"] = tname
        return table, excluded

    def _step_catalogue(self) -> dict:
        table, excluded = self._build_catalogue()
        in_train = np.asarray(table["IN_TRAINING"], dtype=bool)
        in_hold = np.asarray(table["REFERENCE_STATUS"]).astype(str) == "holdout"
        tname = self.config.data["target"]["name"]
        rname = self.config.data["reference"]["name"]
        cat_path = write_table(table, self.output / "catalogue.fits", overwrite=True)
        exc_path = write_table(excluded, self.output / "excluded.fits", overwrite=True)
        # summary: counts, validation, hold-out comparison on the reference scale
        summary = {
            "catalogue": str(cat_path),
            "excluded": str(exc_path),
            "n_labelled": len(table),
            "n_training": int(in_train.sum()),
            "n_holdout": int(in_hold.sum()),
            "n_excluded": {
                s: int((excluded["STEP"] == s).sum())
                for s in ("read", "preprocess", "crossmatch", "cuts", "cleanup", "infer")
            },
            "n_unlabelled": int((~excluded["LABELLED"]).sum()) if len(excluded) else 0,
        }
        if self.is_done("validate"):
            summary["validation"] = self.manifest("validate").get("statistics")
        if in_hold.any():
            good = in_hold & ((np.asarray(table["FLAGS"]) & _FAILED_FIT) == 0)
            comp = {}
            for n in self.config.label_names:
                ref_v = _as_float(table[f"{rname}_{n}"])[good]
                d = _as_float(table[n])[good] - ref_v
                entry = {"n": int(np.isfinite(d).sum()), "bias": _nanmean(d), "rms": _nanstd(d)}
                if f"{tname}_{n}" in table.colnames:
                    dy = _as_float(table[f"{tname}_{n}"])[good] - ref_v
                    entry[f"{tname.lower()}_bias"] = _nanmean(dy)
                    entry[f"{tname.lower()}_rms"] = _nanstd(dy)
                comp[n] = entry
            summary["holdout_vs_reference"] = comp
        _write_json(self.output / "summary.json", summary)
        n_unl = summary["n_unlabelled"]
        logger.info(
            "catalogue: %d stars labelled; %d file(s)/star(s) skipped without labels; %d reference candidates excluded",
            len(table),
            n_unl,
            len(excluded) - n_unl,
        )
        return summary

    # ---------------------------------------------------------------- step: evaluate
    def _step_evaluate(self) -> dict:

        self.manifest("catalogue")
        ev = self.config.data["evaluate"]
        catalogue = Table.read(self.output / "catalogue.fits")

        truth = read_labels(self.config.path(ev["truth"]), id_column=ev["id_column"])
        table, stats = evaluate(
            catalogue,
            truth,
            self.config.label_names,
            truth_id_column=ev["id_column"],
            truth_labels=ev["labels"] or None,
            offsets=ev["offsets"] or None,
            target_name=self.config.data["target"]["name"],
        )
        write_table(table, self.step_dir("evaluate") / "evaluation.fits", overwrite=True)
        _write_json(self.step_dir("evaluate") / "evaluation.json", stats)
        return {"statistics": stats}

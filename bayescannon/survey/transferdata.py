"""The data steps of the label-transfer pipeline (read, preprocess, crossmatch): survey
files to preprocessed spectra on one grid and a cross-match with the reference catalogue.
"""

from __future__ import annotations

import glob
import logging
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from astropy.table import MaskedColumn, Table

from bayescannon.core.grid import C_KMS
from bayescannon.errors import (
    GridMismatchError,
    InsufficientDataError,
    InvalidInputError,
    LabelError,
    SurveyFormatError,
)
from bayescannon.io import read_labels, read_spectra, write_spectra
from bayescannon.preprocess import mask_bits, mask_windows, normalise_ho2017, resample, to_rest_frame
from bayescannon.preprocess import snr as pixel_snr
from bayescannon.spectra import join_ids, make_spectra
from bayescannon.survey.catalogue import write_table
from bayescannon.survey.reference import crossmatch_ids, crossmatch_sky
from bayescannon.survey.transferconfig import _as_float, _str_ids

logger = logging.getLogger(__name__)


class _DataSteps:
    """The data steps of :class:`~bayescannon.survey.transfer.TransferPipeline`: read the survey
    files, preprocess the spectra onto one grid, cross-match with the reference catalogue.

    A mixin: it relies on the pipeline's ``config``, ``output`` and bookkeeping methods
    (``step_dir``, ``manifest``, ``_write_excluded``, ``_read_table``)."""

    # ---------------------------------------------------------------- shared loaders
    def _spectra_paths(self) -> list[Path]:
        spec = self.config.data["target"]["spectra"]
        patterns = [spec] if isinstance(spec, str) else list(spec)
        paths: list[Path] = []
        for pattern in patterns:
            p = self.config.path(pattern)
            if p.is_dir():
                found = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
            else:
                found = sorted(Path(q) for q in glob.glob(str(p)))
            if not found:
                logger.warning("no spectra file matches %s", p)
            paths.extend(found)
        unique = sorted(set(paths), key=lambda q: str(q))
        if not unique:
            raise InvalidInputError(f"[target] spectra {patterns} match no file (relative to {self.config.base_dir})")
        return unique

    def _load_preprocessed(self) -> xr.Dataset:
        self.manifest("preprocess")

        return read_spectra(self.step_dir("preprocess") / "spectra.nc")

    def _select(self, ds: xr.Dataset, ids) -> xr.Dataset:
        """Stars ``ids`` of ``ds``, in that order (all must be there)."""
        star = np.asarray(ds["star"].values).astype(str)
        ids = np.asarray(ids).astype(str)
        rows, hit = join_ids(ids, star, what="the preprocessed spectra", require="none")
        if not hit.all():
            missing = ids[~hit]
            raise InvalidInputError(
                f"{missing.size} star(s) of the reference set are not in the preprocessed spectra "
                f"(e.g. {', '.join(missing[:3])}): re-run the pipeline --from preprocess"
            )
        return ds.isel(star=rows)

    # ---------------------------------------------------------------- step: read
    def _step_read(self) -> dict:

        tgt = self.config.data["target"]
        paths = self._spectra_paths()
        fmt = tgt["format"]
        reader_kwargs = dict(tgt["reader"] or {})
        records: list[dict] = []
        skipped: list[tuple] = []
        for path in paths:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    one = read_spectra(path, format=fmt, **reader_kwargs)
                except (SurveyFormatError, InvalidInputError, OSError) as exc:
                    # the star's id is in the file we could not read: the file stem stands in
                    skipped.append(
                        (path.stem, path.name, "read", False, f"{type(exc).__name__}: {exc} (ID is the file stem)")
                    )
                    continue
            notes = "; ".join(sorted({str(w.message) for w in caught}))
            if notes:
                logger.warning("%s: %s", path.name, notes)
            per_star = [k for k, v in one.data_vars.items() if v.dims == ("star",)]
            wl = np.asarray(one["wavelength"].values, dtype=np.float64)
            for i in range(one.sizes["star"]):
                records.append(
                    {
                        "id": str(one["star"].values[i]),
                        "path": path,
                        "wavelength": wl,
                        "flux": np.asarray(one["flux"].values[i], dtype=np.float64),
                        "ivar": np.asarray(one["ivar"].values[i], dtype=np.float64),
                        "mask": None if "mask" not in one else np.asarray(one["mask"].values[i]),
                        "extras": {k: one[k].values[i] for k in per_star},
                        "attrs": dict(one.attrs),
                        "wl_attrs": dict(one["wavelength"].attrs),
                        "notes": notes,
                    }
                )
        # an id claimed by several files: none of them can be trusted to be the star
        claims: dict[str, list[int]] = {}
        for i, rec in enumerate(records):
            claims.setdefault(rec["id"], []).append(i)
        drop = set()
        for sid, idx in claims.items():
            if len(idx) > 1:
                files = ", ".join(records[i]["path"].name for i in idx)
                for i in idx:
                    drop.add(i)
                    skipped.append(
                        (
                            sid,
                            records[i]["path"].name,
                            "read",
                            False,
                            f"duplicated id: {sid!r} is claimed by {len(idx)} files ({files}); none is used",
                        )
                    )
        records = [r for i, r in enumerate(records) if i not in drop]
        self._write_excluded("read", skipped)
        if skipped:
            logger.warning("read: skipped %d of %d file(s)/star(s); first: %s", len(skipped), len(paths), skipped[0][4])
        if not records:
            raise InvalidInputError(
                f"none of the {len(paths)} spectra files could be used; first problem: "
                f"{skipped[0][4] if skipped else 'none'} (see {self.step_dir('read') / 'excluded.fits'})"
            )
        # group by wavelength grid (files of one survey usually share one)
        groups: dict[bytes, list[int]] = {}
        for i, rec in enumerate(records):
            groups.setdefault(np.ascontiguousarray(rec["wavelength"]).tobytes(), []).append(i)
        files = []
        for g, idx in enumerate(sorted(groups.values(), key=len, reverse=True)):
            recs = [records[i] for i in idx]
            keys: list[str] = []
            for r in recs:
                keys.extend(k for k in r["extras"] if k not in keys)
            extras = {}
            for k in keys:
                vals = [r["extras"].get(k, None) for r in recs]
                kinds = {np.asarray(v).dtype.kind for v in vals if v is not None}
                if kinds & {"U", "S", "O"}:
                    extras[k] = np.asarray(["" if v is None else str(v) for v in vals], dtype=str)
                elif kinds <= {"b"} and None not in vals:
                    extras[k] = np.asarray(vals, dtype=bool)
                elif kinds <= {"i", "u"} and None not in vals:
                    extras[k] = np.asarray(vals, dtype=np.int64)
                else:
                    extras[k] = np.asarray([np.nan if v is None else v for v in vals], dtype=np.float64)
            extras["source_file"] = np.asarray([r["path"].name for r in recs], dtype=str)
            has_mask = any(r["mask"] is not None for r in recs)
            mask = None
            if has_mask:
                mask = np.stack(
                    [
                        np.zeros(r["flux"].size, np.uint32) if r["mask"] is None else np.asarray(r["mask"], np.uint32)
                        for r in recs
                    ]
                )
            attrs = {k: v for k, v in recs[0]["attrs"].items() if k != "history"}
            attrs["history"] = f"bayescannon.survey.transfer read: {len(recs)} file(s)"
            ds = make_spectra(
                recs[0]["wavelength"],
                np.stack([r["flux"] for r in recs]),
                np.stack([r["ivar"] for r in recs]),
                ids=[r["id"] for r in recs],
                mask=mask,
                attrs=attrs,
                **extras,
            )
            ds["wavelength"].attrs.update(recs[0]["wl_attrs"])
            name = f"spectra_g{g:03d}.nc"
            write_spectra(ds, self.step_dir("read") / name, overwrite=True)
            files.append(name)
            wl = recs[0]["wavelength"]
            logger.info("read: group %d: %d spectra, %d pixels %.1f-%.1f A", g, len(recs), wl.size, wl[0], wl[-1])
        return {
            "n_files": len(paths),
            "n_stars": len(records),
            "n_skipped": len(skipped),
            "groups": files,
        }

    # ---------------------------------------------------------------- step: preprocess
    def _target_grid(self, groups: list[xr.Dataset]) -> np.ndarray:
        pp = self.config.data["preprocess"]
        rng = pp["wavelength_range"]
        step = pp["log10_step"]
        big = max(groups, key=lambda d: d.sizes["star"])
        wl = np.asarray(big["wavelength"].values, dtype=np.float64)
        if step is None:
            step = float(np.median(np.diff(np.log10(wl))))
        if rng is None:
            z = np.zeros(1)
            for col in ("redshift",):
                if col in big:
                    zz = np.asarray(big[col].values, dtype=float)
                    z = zz[np.isfinite(zz)] if np.isfinite(zz).any() else z
            if "rv" in big and "redshift" not in big:
                vv = np.asarray(big["rv"].values, dtype=float) / C_KMS
                z = vv[np.isfinite(vv)] if np.isfinite(vv).any() else z
            zmax = float(min(np.max(np.abs(z)), 0.01))
            rng = (wl[0] * (1.0 + zmax), wl[-1] / (1.0 + zmax))
        lo, hi = float(rng[0]), float(rng[1])
        if not (0 < lo < hi) or not (step > 0):
            raise InvalidInputError(
                f"[preprocess] wavelength_range must be (lo, hi) with 0 < lo < hi and log10_step > 0; "
                f"got {rng} and {step}"
            )
        n = int(np.floor(np.log10(hi / lo) / step + 1e-9)) + 1
        if n < 2:
            raise InvalidInputError(f"[preprocess] the grid {lo}-{hi} A with log10_step {step} has fewer than 2 pixels")
        return 10.0 ** (np.log10(lo) + step * np.arange(n))

    def _preprocess_group(self, ds: xr.Dataset, grid: np.ndarray) -> tuple[xr.Dataset, dict]:
        """One grid group through the preprocessing steps; returns (container, reasons)."""

        pp = self.config.data["preprocess"]
        reasons: dict[str, str] = {}
        ids = np.asarray(ds["star"].values).astype(str)
        if pp["reject_bits"] and "mask" in ds:
            ds = mask_bits(ds, pp["reject_bits"])
        frame = ds["wavelength"].attrs.get("frame", "observed")
        how = pp["rest_frame"]
        if how == "auto":
            how = "none" if frame == "rest" else "redshift" if "redshift" in ds else "rv" if "rv" in ds else "missing"
        if how == "missing":
            raise InvalidInputError("spectra are in the observed frame and have no redshift or rv column")
        if how == "none":
            out = resample(ds, grid, variance=pp["variance"])
        else:
            if how not in ds:
                raise InvalidInputError(f"[preprocess] rest_frame = {how!r} but the spectra have no {how!r} column")
            v = np.asarray(ds[how].values, dtype=np.float64)
            bad = ~np.isfinite(v)
            for s in ids[bad]:
                reasons[s] = f"no valid {how} (missing or -9999 in the file): cannot shift to the rest frame"
            kw = {"redshift": v} if how == "redshift" else {"rv": v}
            out = to_rest_frame(ds, new_wavelength=grid, variance=pp["variance"], force=True, **kw)
        if pp["mask_windows_observed"]:
            col = "redshift" if "redshift" in out else "rv" if "rv" in out else None
            if how == "none" or col is None:
                out = mask_windows(out, pp["mask_windows_observed"])
            else:
                out = mask_windows(out, pp["mask_windows_observed"], frame="observed")
        if pp["mask_windows_rest"]:
            out = mask_windows(out, pp["mask_windows_rest"])
        L = pp["normalise_L"]
        if L and not bool(ds.attrs.get("normalised", False)):
            out = normalise_ho2017(out, float(L))
        return out, reasons

    def _step_preprocess(self) -> dict:

        man = self.manifest("read")
        pp = self.config.data["preprocess"]
        groups = [read_spectra(self.step_dir("read") / name) for name in man["groups"]]
        grid = self._target_grid(groups)
        excluded: list[tuple] = []
        parts = []
        for ds in groups:
            ids = np.asarray(ds["star"].values).astype(str)
            files = np.asarray(ds["source_file"].values).astype(str) if "source_file" in ds else np.full(ids.size, "")
            wl = np.asarray(ds["wavelength"].values)
            try:
                out, reasons = self._preprocess_group(ds, grid)
            except (GridMismatchError, InvalidInputError) as exc:
                if isinstance(exc, GridMismatchError):
                    why = (
                        f"wavelength grid {wl[0]:.1f}-{wl[-1]:.1f} A does not overlap the common "
                        f"grid {grid[0]:.1f}-{grid[-1]:.1f} A"
                    )
                else:
                    why = f"cannot be preprocessed: {exc}"
                logger.warning("preprocess: %d star(s) excluded: %s", ids.size, why)
                excluded.extend((s, f, "preprocess", False, why) for s, f in zip(ids, files, strict=True))
                continue
            ivar = np.asarray(out["ivar"].values)
            good = (ivar > 0).mean(axis=1)
            keep = good >= float(pp["min_good_fraction"])
            if float(pp["min_good_fraction"]) == 0.0:
                keep &= good > 0
            for j in np.flatnonzero(~keep):
                why = reasons.get(ids[j])
                if why is None:
                    if good[j] == 0:
                        why = "no usable pixel after preprocessing (every pixel masked)"
                    else:
                        why = (
                            f"only {good[j]:.0%} of the pixels are usable after preprocessing "
                            f"(min_good_fraction = {float(pp['min_good_fraction']):.0%})"
                        )
                excluded.append((ids[j], files[j], "preprocess", False, why))
            if keep.any():
                part = out.isel(star=np.flatnonzero(keep))
                part = part.assign(good_fraction=("star", good[keep]), snr_pixels=("star", pixel_snr(part)))
                parts.append(part)
        self._write_excluded("preprocess", excluded)
        if excluded:
            logger.warning(
                "preprocess: excluded %d star(s); first: %s: %s", len(excluded), excluded[0][0], excluded[0][4]
            )
        if not parts:
            raise InsufficientDataError("no star is left after preprocessing (see the excluded table)")
        # stack the groups (same grid now)
        keys: list[str] = []
        for p in parts:
            keys.extend(k for k, v in p.data_vars.items() if v.dims == ("star",) and k not in keys)
        extras = {}
        for k in keys:
            cols = []
            for p in parts:
                if k in p:
                    cols.append(np.asarray(p[k].values))
                else:
                    cols.append(np.full(p.sizes["star"], np.nan))
            kinds = {c.dtype.kind for c in cols}
            if kinds & {"U", "S", "O"}:
                cols = [c.astype(str) for c in cols]
            extras[k] = np.concatenate(cols)
        extras.pop("all_masked", None)
        mask = None
        if all("mask" in p for p in parts):
            mask = np.concatenate([np.asarray(p["mask"].values) for p in parts])
        attrs = {k: v for k, v in parts[0].attrs.items()}
        attrs["normalised"] = int(bool(attrs.get("normalised", False)))
        ds = make_spectra(
            grid,
            np.concatenate([np.asarray(p["flux"].values) for p in parts]),
            np.concatenate([np.asarray(p["ivar"].values) for p in parts]),
            ids=np.concatenate([np.asarray(p["star"].values).astype(str) for p in parts]),
            mask=mask,
            attrs=attrs,
            **extras,
        )
        ds["wavelength"].attrs.update(dict(parts[0]["wavelength"].attrs))
        ds["wavelength"].attrs["frame"] = "rest"
        write_spectra(ds, self.step_dir("preprocess") / "spectra.nc", overwrite=True)
        return {
            "n_stars": int(ds.sizes["star"]),
            "n_excluded": len(excluded),
            "n_pixels": int(grid.size),
            "wavelength_range": [float(grid[0]), float(grid[-1])],
            "log10_step": float(np.log10(grid[1] / grid[0])),
        }

    # ---------------------------------------------------------------- step: crossmatch
    def _targets_table(self, ds: xr.Dataset) -> Table:
        """One row per preprocessed star: ID, per-star columns, survey-Y pipeline labels."""

        t = Table()
        t["ID"] = np.asarray(ds["star"].values).astype(str)
        for k, v in ds.data_vars.items():
            if v.dims == ("star",) and k not in ("ID",):
                t[k] = np.asarray(v.values)
        tgt = self.config.data["target"]
        tname = tgt["name"]
        if tgt["catalogue"]:
            cat = read_labels(self.config.path(tgt["catalogue"]), id_column=tgt["catalogue_id_column"])
            cat.meta.clear()  # see _step_crossmatch: no EXTNAME merge conflicts in hstack
            cols = {**{n: c for n, c in tgt["labels"].items()}}
            missing = [c for c in list(cols.values()) + list(tgt["errors"].values()) if c not in cat.colnames]
            if missing:
                raise LabelError(f"[target] catalogue {tgt['catalogue']} has no column(s) {missing}")
            matched, rejected = crossmatch_ids(t, cat, "ID", tgt["catalogue_id_column"], duplicates="reject")
            dup = [r for r in rejected if r["table"] == "b" and str(r["reason"]).startswith("duplicated")]
            if dup:
                logger.warning("[target] catalogue: %d rows with duplicated ids ignored", len(dup))
            rows_a = np.asarray(matched["row_a"], dtype=np.intp)
            rows_b = np.asarray(matched["row_b"], dtype=np.intp)
            for name, col in cols.items():
                vals = np.full(len(t), np.nan)
                vals[rows_a] = _as_float(cat[col])[rows_b]
                t[f"{tname}_{name}"] = MaskedColumn(vals, mask=~np.isfinite(vals))
            for name, col in tgt["errors"].items():
                vals = np.full(len(t), np.nan)
                vals[rows_a] = _as_float(cat[col])[rows_b]
                t[f"{tname}_e_{name}"] = MaskedColumn(vals, mask=~np.isfinite(vals))
            logger.info("crossmatch: %d of %d stars found in the %s catalogue", rows_a.size, len(t), tname)
        return t

    def _step_crossmatch(self) -> dict:

        ds = self._load_preprocessed()
        targets = self._targets_table(ds)
        ref_cfg = self.config.data["reference"]
        xm = self.config.data["crossmatch"]
        ref = read_labels(
            self.config.path(ref_cfg["catalogue"]),
            id_column=ref_cfg["id_column"],
            missing_values=tuple(ref_cfg["missing_values"]),
        )
        # reference.crossmatch_* hstack the tables and astropy warns (MergeConflictWarning)
        # when both carry an EXTNAME: the matched table needs no catalogue metadata
        ref.meta.clear()
        targets.meta.clear()
        need = list(ref_cfg["labels"].values()) + list(ref_cfg["errors"].values())
        if xm["method"] == "sky":
            need += [ref_cfg["ra_column"], ref_cfg["dec_column"]]
        missing = [c for c in need if c not in ref.colnames]
        if missing:
            raise LabelError(
                f"[reference] catalogue {ref_cfg['catalogue']} has no column(s) {missing}; "
                f"columns are {', '.join(ref.colnames[:30])}"
            )
        if xm["method"] == "sky":
            tgt = self.config.data["target"]
            for c in (tgt["ra_column"], tgt["dec_column"]):
                if c not in targets.colnames:
                    raise InvalidInputError(
                        f"[crossmatch] method = 'sky' needs the spectra column {c!r} (from the file headers); "
                        "set [target] ra_column/dec_column or use method = 'id'"
                    )
            matched, rejected = crossmatch_sky(
                targets,
                ref,
                float(xm["tolerance_arcsec"]),
                ra_a=tgt["ra_column"],
                dec_a=tgt["dec_column"],
                ra_b=ref_cfg["ra_column"],
                dec_b=ref_cfg["dec_column"],
                id_a="ID",
                ambiguous=xm["ambiguous"],
            )
        else:
            col = xm["target_id_column"]
            if col not in targets.colnames:
                raise InvalidInputError(f"[crossmatch] target_id_column {col!r} is not a column of the spectra table")
            matched, rejected = crossmatch_ids(targets, ref, col, ref_cfg["id_column"], duplicates=xm["duplicates"])
        rows_a = np.asarray(matched["row_a"], dtype=np.intp)
        rows_b = np.asarray(matched["row_b"], dtype=np.intp)
        # matched table: target columns, then reference columns (renamed on clashes), then
        # the reference labels under fixed names REF_<label>
        out = targets[rows_a]
        rname = ref_cfg["name"]
        sub = ref[rows_b]
        for c in sub.colnames:
            name = c if c not in out.colnames else f"{c}_{rname}"
            out[name] = sub[c]
        for extra in ("sep_arcsec", "n_candidates"):
            if extra in matched.colnames:
                out[extra] = matched[extra]
        out["REF_ID"] = _str_ids(sub[ref_cfg["id_column"]]) if ref_cfg["id_column"] else np.asarray(rows_b).astype(str)
        for n in self.config.label_names:
            vals = _as_float(sub[ref_cfg["labels"][n]])
            vals = np.where(np.isin(vals, ref_cfg["missing_values"]), np.nan, vals)
            out[f"REF_{n}"] = MaskedColumn(vals, mask=~np.isfinite(vals))
            if n in ref_cfg["errors"]:
                e = _as_float(sub[ref_cfg["errors"][n]])
                e = np.where(np.isin(e, ref_cfg["missing_values"]), np.nan, e)
                out[f"REF_e_{n}"] = MaskedColumn(e, mask=~np.isfinite(e))
        # which stars are excluded from the reference set, and which simply have no partner
        excl = []
        for r in rejected:
            if r["table"] != "a":
                continue
            reason = str(r["reason"])
            if reason.startswith("no table_b row within") or reason == "no match in table_b":
                continue
            sid = str(targets["ID"][int(r["row"])])
            excl.append(
                (
                    sid,
                    "",
                    "crossmatch",
                    True,
                    reason.replace("table_b", f"{rname} catalogue").replace("table_a", "spectra"),
                )
            )
        self._write_excluded("crossmatch", excl)
        write_table(targets, self.step_dir("crossmatch") / "targets.fits", overwrite=True)
        write_table(out, self.step_dir("crossmatch") / "matched.fits", overwrite=True)
        write_table(rejected, self.step_dir("crossmatch") / "rejected.fits", overwrite=True)
        if excl:
            logger.warning(
                "crossmatch: %d star(s) kept out of the reference set; first: %s: %s", len(excl), excl[0][0], excl[0][4]
            )
        logger.info("crossmatch: %d of %d stars matched to the %s catalogue", len(out), len(targets), rname)
        return {"n_targets": len(targets), "n_matched": len(out), "n_excluded": len(excl)}

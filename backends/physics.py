"""The physics of a plate as the instrument recorded it: pixel size, z spacing, time
interval and what each channel is (name, wavelengths, display colour and window).

Handlers fill a :class:`PlatePhysics` from the instrument's own metadata (MetaSeries
tags through tifffile, the Harmony index XML); it goes into ``openhcs_metadata.json``
and from there into every OME-Zarr store written from the plate (scale, ``omero``).
A quantity the instrument did not record stays ``None`` -- never a made-up number --
and ``unknown`` says why, for ``vfsmount info``.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

# unit name (as instruments and NGFF axes write it) -> factor to micrometres
_TO_UM = {"m": 1e6, "meter": 1e6, "metre": 1e6, "cm": 1e4, "centimeter": 1e4,
          "mm": 1e3, "millimeter": 1e3, "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0,
          "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
          "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "angstrom": 1e-4, "\u00e5": 1e-4,
          "pm": 1e-6, "picometer": 1e-6}


def to_micrometers(value: float, unit: str | None) -> float | None:
    """``value`` in micrometres, or None when ``unit`` is missing or not a length: a number
    without a unit counts pixels or planes, and is never taken for micrometres."""
    factor = _TO_UM.get(unit.strip().lower()) if isinstance(unit, str) else None
    return None if factor is None else value * factor


def median_step(positions: list[float], ndigits: int = 4) -> float | None:
    """The median step between consecutive positions (in acquisition order); None if there is
    no step or the steps are all zero (a stage that did not move records no spacing)."""
    steps = [abs(b - a) for a, b in zip(positions, positions[1:])]
    steps = [s for s in steps if s > 0]
    return round(statistics.median(steps), ndigits) if steps else None


def wavelength_color(nm: float | None) -> str | None:
    """An RGB hex colour for an emission wavelength (visible range; white for none/0 = bright
    field). The usual piecewise-linear spectrum approximation."""
    if nm is None:
        return None
    if nm <= 0:
        return "FFFFFF"
    stops = [(380, (0.5, 0, 1)), (440, (0, 0, 1)), (490, (0, 1, 1)), (510, (0, 1, 0)),
             (580, (1, 1, 0)), (645, (1, 0, 0)), (780, (1, 0, 0))]
    nm = min(max(nm, 380), 780)
    for (w0, c0), (w1, c1) in zip(stops, stops[1:]):
        if nm <= w1:
            f = (nm - w0) / (w1 - w0)
            rgb = [a + (b - a) * f for a, b in zip(c0, c1)]
            return "".join(f"{round(v * 255):02X}" for v in rgb)
    return "FF0000"


@dataclass
class ChannelInfo:
    name: str | None = None
    emission_wavelength: float | None = None     # nm
    excitation_wavelength: float | None = None   # nm
    window: list[float] | None = None            # [start, end] the instrument displayed

    def as_dict(self) -> dict:
        out = {"name": self.name, "emission_wavelength": self.emission_wavelength,
               "excitation_wavelength": self.excitation_wavelength,
               "color": wavelength_color(self.emission_wavelength)}
        if self.window:
            out["window"] = list(self.window)
        return out


@dataclass
class PlatePhysics:
    z_spacing: float | None = None               # um, median step between z-planes
    time_interval: float | None = None           # s, median step between time points
    channels: dict[int, ChannelInfo] = field(default_factory=dict)
    unknown: dict[str, str] = field(default_factory=dict)   # quantity -> why it is not known

    def entry_fields(self, z_count: int, t_count: int, labels: dict[str, str | None]) -> dict:
        """The openhcs_metadata.json fields of an image set with ``z_count`` planes,
        ``t_count`` time points and the channels ``labels`` (channel -> name; a single plane
        has no z spacing to speak of)."""
        z = self.z_spacing if z_count > 1 else None
        t = self.time_interval if t_count > 1 else None
        unknown = {}
        if z is None:
            unknown["z_spacing"] = (self.unknown.get("z_spacing", "not recorded by the instrument")
                                    if z_count > 1 else "a single z-plane")
        if t is None and t_count > 1:
            unknown["time_interval"] = self.unknown.get("time_interval",
                                                        "not recorded by the instrument")
        return {"z_spacing": z, "time_interval": t,
                "channel_names": dict(labels),
                "channel_info": {c: {**self.channels.get(int(c), ChannelInfo()).as_dict(),
                                     "name": name} for c, name in labels.items()},
                "physics_unknown": unknown}

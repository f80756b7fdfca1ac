"""Plates: a plate opened once, its image sets, microscope handlers, metadata, conversion
and the plate documents (LoadData, companion). The top layer of backends/."""

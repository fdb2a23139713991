from .opmask import OPMaskModel

__all__ = ["OPMaskModel"]

"""bayescannon: put the spectra of one stellar survey onto the label scale of another.

The Cannon (Ness+2015; Casey+2016; Ho+2017) done properly: a fast vectorised MAP
engine, the same model in PyMC for posteriors, and the survey machinery around it.

>>> from bayescannon import CannonModel
>>> model = CannonModel(label_names=["TEFF", "LOGG", "FE_H"], order=2)  # doctest: +SKIP
>>> model.fit(flux, ivar, labels)                                        # doctest: +SKIP
>>> result = model.infer(test_flux, test_ivar)                           # doctest: +SKIP
"""

from bayescannon import errors
from bayescannon._version import __version__
from bayescannon.core.vectorizer import PolynomialVectorizer
from bayescannon.flags import PixelFlag, StarFlag
from bayescannon.model import CannonModel
from bayescannon.spectra import make_spectra

__all__ = ["CannonModel", "PolynomialVectorizer", "PixelFlag", "StarFlag", "make_spectra", "errors", "__version__"]

"""synthesize kernels: class-conditional synthetic samples, admitted only through a quality gate.

`generators.py` (the VAE / GAN plug-ins), `gate.py` (FID, KID, precision / recall,
memorisation, label consistency: pure kernels over feature arrays). The stage is `stages.synthesize`.
"""

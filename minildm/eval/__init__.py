"""How results are judged: reconstruction metrics, the FID-style score, the content checker, prompts.

* :mod:`minildm.eval.metrics`: PSNR, SSIM, LPIPS distance (notebooks 01, 02)
* :mod:`minildm.eval.fid`: the feature network and the Fréchet distance (notebooks 02, 03)
* :mod:`minildm.eval.checker`: reads shape, colour, box and count of generated objects (notebooks 04, 05)
* :mod:`minildm.eval.prompts`: the fixed compositional prompt set, seen and held-out (notebook 05)
* :mod:`minildm.eval.attention_maps`: cross-attention maps of a sampling run (notebooks 04, 05)
"""

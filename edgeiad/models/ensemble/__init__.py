"""PatchCore + PaDiM on one backbone pass, maps put on one scale by held-out good images and averaged."""

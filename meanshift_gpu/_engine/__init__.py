"""The engine: the host loop of the ascent (and the fused device-resident one), blurring, merge, labels.

``ascent.py`` owns the iteration logic (scikit-learn's stopping rule, OOM
shrinking of tiles, the merge and the labels), ``backends.py`` the registry of
implementations of the hot operations (torch, Triton), ``threads.py`` the CPU
threads during an ascent.  Every automatic choice they follow is made in
:mod:`meanshift_gpu._decisions`.
"""

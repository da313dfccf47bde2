"""The assignment arena: one tiny detector trained with every assigner, compared on the same data.

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, float32, ``x1 <= x2``, everywhere in the package.
Shape shorthand: ``B`` images, ``N`` priors, ``M`` gts per image (padded), ``C`` classes.

- :mod:`lessons.arena.data`: procedural shapes on textured backgrounds (small, crowded, elongated and
  sub-stride objects), deterministic from a seed; COCO-format export.
- :mod:`lessons.arena.model`: the detector (3-level FPN, strides 8/16/32, one prior per location).
- :mod:`lessons.arena.recipes`: the registry: per assigner, how to call it, the loss its paper pairs with
  it, and the test-time score. Every assigner plugs in through ``AssignResult`` alone.
- :mod:`lessons.arena.losses`: GIoU, quality focal loss, BCE sums.
- :mod:`lessons.arena.train`: the training loop (tqdm progress), the onnxruntime assignment backend, evaluation.
- :mod:`lessons.arena.evaluate`: post-processing with and without NMS, COCO AP through pycocotools,
  duplicates without NMS, positives per gt.
- :mod:`lessons.arena.bench`: ``make arena`` (``python -m lessons.arena run``) and its report.
- :mod:`lessons.arena.exercises`: notebook 10's exercise checks.
"""

"""The workload cases the lessons define, for the benchmark harnesses (``benchmarks/run.py``,
``benchmarks/gpu.py``): ``<topic>_case(workload, **params)`` returns ``(module, inputs)`` of
``lessons.<topic>.benchmark_case``; ``<topic>_reference`` the per-image reference's timed call. One explicit
function per topic, importing its lesson when first called (gpu.py needs no lesson it does not run).
"""

from __future__ import annotations


def atss_case(workload: str, **params):
    from lessons.atss import benchmark_case

    return benchmark_case(workload, seed=0, **params)


def atss_reference(workload: str, **params):
    from lessons.atss import benchmark_reference

    return benchmark_reference(workload, seed=0, **params)


def simota_case(workload: str, **params):
    from lessons.simota import benchmark_case

    return benchmark_case(workload, seed=0, **params)


def task_aligned_case(workload: str, **params):
    from lessons.task_aligned import benchmark_case

    return benchmark_case(workload, seed=0, **params)


def dynamic_soft_label_case(workload: str, **params):
    from lessons.dynamic_soft_label import benchmark_case

    return benchmark_case(workload, seed=0, **params)


def o2f_case(workload: str, **params):
    from lessons.o2f import benchmark_case

    return benchmark_case(workload, seed=0, **params)


def roi_head_sampling_case(workload: str, **params):
    from lessons.roi_head_sampling import benchmark_case

    return benchmark_case(workload, seed=0, **params)


def roi_head_sampling_reference(workload: str, **params):
    from lessons.roi_head_sampling import benchmark_reference

    return benchmark_reference(workload, seed=0, **params)

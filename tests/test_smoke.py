import pyllama_q


def test_cpu_info_reports_a_kernel_variant():
    info = pyllama_q.cpu_info()
    assert set(info) == {"features", "kernels", "available"}

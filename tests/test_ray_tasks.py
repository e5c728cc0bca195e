import pytest

from ravis.ray_tasks import run_tasks


def test_every_result_arrives_and_a_task_error_is_raised_as_itself():
    ray = pytest.importorskip("ray")

    def square_or_refuse(x):  # defined here: Ray ships a local function by value
        if x < 0:
            raise ValueError(f"negative input {x}")
        return x * x

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        got = []
        run_tasks(square_or_refuse, [(x,) for x in range(6)], got.append)
        assert sorted(got) == [0, 1, 4, 9, 16, 25]
        with pytest.raises(ValueError, match="negative input -3"):  # not a RayTaskError
            run_tasks(square_or_refuse, [(2,), (-3,)], got.append)
        assert ray.is_initialized()  # a session it did not start is left running
    finally:
        ray.shutdown()

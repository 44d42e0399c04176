"""Helpers for tests that spawn gloo process groups."""
import datetime
import os


def init_group(rank: int, world: int, out_dir: str) -> None:
    """gloo group rendezvousing through a file: no port to pick (picking a
    free port and handing it over races with the OS)."""
    import torch.distributed as dist
    dist.init_process_group(
        'gloo', rank=rank, world_size=world,
        init_method=f'file://{os.path.join(out_dir, "rendezvous")}',
        timeout=datetime.timedelta(seconds=120))

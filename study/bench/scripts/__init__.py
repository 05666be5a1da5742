"""Standalone scripts that `study bench` runs as subprocesses: the usual way of doing what the
project does, written as the PyTorch and Ray Tune tutorials write it. They import nothing from
this project, so that they measure the tutorials' costs and not ours."""

"""Many GPUs and many machines: K workers per GPU on this machine (``launch``), sbatch scripts for
SLURM (``slurm``), and one trial trained data-parallel on G GPUs under torchrun (``torchrun``)."""

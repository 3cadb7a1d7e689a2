"""The beta-VAE (Higgins et al. 2017) in the PAE paper's form (Eq. 15: beta |KL - C|) on the
family's protocol: the `dcgan` network, its encoder emitting the posterior's mean and raw scale,
the decoder a per-pixel mean and scale (the `vae` head). beta = 1, C = 0 is the plain VAE, the
2-stage VAE's first stage (`twostage_vae.py`).

Command:  python -m experiments.train --config experiments/configs/betavae.py:mnist,cpu \
              --workdir runs/betavae_mnist_cpu
The argument is DATASET[,cpu][,BETA,C] (default beta 1, C 0); e.g. `betavae.py:mnist,cpu,4,10`.
"""

from experiments.configs import family


def get_config(arg="mnist"):
    parts = (arg or "mnist").split(",")
    cpu = "cpu" in parts
    rest = [p for p in parts[1:] if p != "cpu"]
    if len(rest) not in (0, 2):
        raise ValueError(f"betavae.py:{arg}: the argument is DATASET[,cpu][,BETA,C]")
    c = family.get("vae", ",".join(parts[:1] + (["cpu"] if cpu else [])), name="betavae.py")
    c.model.head = "vae"
    if rest:
        try:
            c.model.beta, c.model.capacity = float(rest[0]), float(rest[1])
        except ValueError:
            raise ValueError(f"betavae.py:{arg}: BETA and C must be numbers, got {rest}") from None
    return c

"""``python -m frcnn_trt`` (also what ``torchrun -m frcnn_trt`` runs)."""

from frcnn_trt.cli import main

if __name__ == "__main__":
    main()

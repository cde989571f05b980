"""`python -m lrm_mup ...` (and `torchrun ... -m lrm_mup train|transfer ...`) is the `lrm-mup` command."""
import sys

from .cli import main

sys.exit(main())

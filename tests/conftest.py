import sys
from pathlib import Path

# Tests import the top-level packages (stream, engines, training) from a plain checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

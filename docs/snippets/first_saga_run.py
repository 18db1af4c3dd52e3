import anyio
from transfers import main

anyio.run(main)

"""Pure loss maths, each function with its formula and tested against hand-worked numbers."""

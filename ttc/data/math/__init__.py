"""MATH (Hendrycks et al., 2021) and its MATH-500 split: the task and answer grading.

`grading`: `extract_boxed` and `is_equiv` (math-verify in a time-limited worker, with a
normalised-string fallback). `dataset`: `MathTask` and the gin configurable `math_task`,
registered as "math500". Importing this package does not import sympy or math-verify.
"""

from ttc.data.math.dataset import MathTask, math_task
from ttc.data.math.grading import extract_boxed, extract_unboxed, is_equiv, normalize

__all__ = ["MathTask", "extract_boxed", "extract_unboxed", "is_equiv", "math_task", "normalize"]

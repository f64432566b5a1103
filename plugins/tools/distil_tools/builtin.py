"""The built-in tools, registered through the same ``register_tools`` hook as any tool plugin."""

from .calculator import CalculatorTool
from .hookspecs import hookimpl
from .python_tool import PythonTool
from .sympy_tool import SympyTool


@hookimpl
def register_tools(register):
    register(CalculatorTool)
    register(PythonTool)
    register(SympyTool)

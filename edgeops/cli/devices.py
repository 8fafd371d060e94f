"""`edgeops devices`: list and show the device profiles that --device accepts."""
from __future__ import annotations

import click

from ..profiles import DeviceProfile, list_profiles, load_profile
from . import output

_WIDE_TABLE = 125  # columns needed for the list table with the board names


@click.group("devices")
def group() -> None:
    """List and inspect device profiles.

    A device profile (devices/*.yaml, or your own .yaml file) describes a board: CPU, GPU,
    memory, OS, the onnxruntime / LiteRT version it can install and the budgets a model
    must meet on it. Commands that take --device NAME|PATH cap the ONNX opset and IR version
    at what the device's runtime loads and check results against the budgets.
    See docs/device-profiles.md to write your own.
    """


@group.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="Print every profile as JSON on stdout instead of a table.")
def list_command(as_json: bool) -> None:
    """List the shipped device profiles.

    One row per profile: board, CPU, RAM, whether the CPU has int8 dot-product instructions
    (what makes int8 quantization pay off), the runtimes it can install with the ONNX
    opset / IR limits, and its latency budget.
    """
    profiles = list_profiles()
    if as_json:
        output.emit_json([p.to_dict() for p in profiles])
        return
    console = output.stdout_console
    if not console.is_terminal:
        # Redirected output has no terminal width; rich would squeeze ten columns into 80.
        from rich.console import Console

        console = Console(highlight=False, width=max(console.width, 130))
    console.print(_profiles_table(profiles, with_board=console.width >= _WIDE_TABLE))
    console.print("onnxruntime: version (highest opset / IR version it loads).  Details: "
                  "edgeops devices show NAME.  Your own profile: see docs/device-profiles.md")


@group.command("show")
@click.argument("profile", metavar="NAME|PATH")
@click.option("--json", "as_json", is_flag=True,
              help="Print the profile as JSON on stdout (the same keys as the YAML file).")
def show_command(profile: str, as_json: bool) -> None:
    """Show one device profile, shipped or your own.

    NAME is a shipped profile (see `edgeops devices list`); PATH is your own .yaml file,
    validated the same way: an invalid one exits with code 2 and names the key at fault.
    """
    p = load_profile(profile)
    if as_json:
        output.emit_json(p.to_dict())
        return
    output.stdout_console.print(_render(p))


def _profiles_table(profiles: list[DeviceProfile], with_board: bool):
    columns = ["name", "board", "arch", "cores", "clock MHz", "RAM MB", "int8 dot",
               "onnxruntime", "LiteRT", "latency ms"]
    rows = [[p.name, p.display_name, p.cpu.arch, p.cpu.cores, p.cpu.clock_mhz or "?",
             p.memory.ram_mb, _yes_no(p.cpu.int8_dot_product), _ort_short(p), _litert_short(p),
             _num(p.budgets.latency_ms)] for p in profiles]
    if not with_board:  # narrow terminal: `show` has the board name
        columns.pop(1)
        for row in rows:
            row.pop(1)
    table = output.table("Device profiles", columns, rows)
    # A cut name or number misleads: give every column but the board and runtime (which
    # wrap at spaces) the width of its longest value; headers wrap at spaces instead.
    for index, column in enumerate(table.columns):
        if column.header not in ("board", "onnxruntime"):
            column.width = max([len(str(row[index])) for row in rows]
                               + [len(word) for word in column.header.split()])
    if not with_board:
        from rich import box

        table.box, table.show_edge, table.padding = box.SIMPLE_HEAD, False, (0, 1, 0, 0)
    return table


def _render(p: DeviceProfile):
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    cpu = p.cpu
    grid.add_row("CPU", f"{cpu.cores}x {cpu.model} ({cpu.arch}) @ {_clock(p)}")
    grid.add_row("", f"SIMD: {', '.join(cpu.simd) or '-'}; int8 dot product: "
                     f"{_yes_no(cpu.int8_dot_product)}; fp16 arithmetic: {_yes_no(cpu.fp16_arithmetic)}")
    if p.gpu:
        g = p.gpu
        grid.add_row("GPU", f"{g.model} ({g.architecture}), {g.cuda_cores} CUDA cores, "
                            f"{g.tensor_cores} tensor cores, compute capability "
                            f"{g.compute_capability or '-'}; fp16: {_yes_no(g.fp16)}, int8: {_yes_no(g.int8)}")
    else:
        grid.add_row("GPU", "none that the runtimes can use")
    mem = p.memory
    shared = ", shared with the GPU" if mem.shared_with_gpu else ""
    grid.add_row("Memory", f"{mem.ram_mb} MB RAM, about {mem.usable_ram_mb} MB usable{shared}")
    glibc = f", glibc {p.os.glibc}" if p.os.glibc else ""
    grid.add_row("OS", f"{p.os.name}; Python {p.os.python}{glibc}")
    ort = p.onnx_runtime
    if ort:
        grid.add_row("onnxruntime", f"{ort.version} ({ort.package}): loads opset <= {ort.max_opset}, "
                                    f"IR <= {ort.max_ir_version}, ai.onnx.ml <= {ort.max_ml_opset}")
        grid.add_row("", "providers: " + ", ".join(ort.execution_providers))
    else:
        grid.add_row("onnxruntime", "none (no wheel for this device)")
    lite = p.tflite_runtime
    grid.add_row("LiteRT", f"{lite.version} ({lite.package})" if lite else "none (no wheel for this device)")
    b = p.budgets
    grid.add_row("Budgets", f"latency {_num(b.latency_ms)} ms, RAM {_num(b.ram_mb)} MB, "
                            f"model size {_num(b.model_size_mb)} MB")
    grid.add_row("Detected by", f'/proc/device-tree/model starting "{p.device_tree_model}"'
                 if p.device_tree_model else "- (generic profile)")
    grid.add_row("File", str(p.source_path) if p.source_path else "-")
    if p.notes:
        grid.add_row("Notes", Text(p.notes))
    title = Table.grid()
    title.add_row(Text(f"{p.display_name}  [{p.name}]", style="bold"))
    title.add_row(grid)
    return title


def _clock(p: DeviceProfile) -> str:
    return f"{p.cpu.clock_mhz} MHz" if p.cpu.clock_mhz else "unknown clock"


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _num(value: float) -> str:
    return f"{value:g}"


def _ort_short(p: DeviceProfile) -> str:
    ort = p.onnx_runtime
    return f"{ort.version} ({ort.max_opset}/{ort.max_ir_version})" if ort else "-"


def _litert_short(p: DeviceProfile) -> str:
    return p.tflite_runtime.version if p.tflite_runtime else "-"

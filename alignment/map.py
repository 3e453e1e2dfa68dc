"""The alignment map: goals, the KPIs that measure them and the driver links between KPIs, as one
Plotly picture coloured by status.

    goals (and sub-goals) | outcome KPIs | driver KPIs | drivers of drivers

Goals sit in the left column(s), one per level of the goal tree; KPIs a goal is judged by
(outcome role) in the next column; operational drivers to the right of what they drive. Lines:
a goal to its sub-goals and to its KPIs, a driver to the outcome it moves. A node's colour is its
status (a goal's is its score band) and so is its marker symbol, and the hover text says it in
words, so colour is never the only carrier. The page puts the same links in an HTML list under
the picture.

Pure functions over already-read rows (GoalCard, DriverLink): nothing here queries or computes a
KPI. Only scatter traces, so the basic Plotly bundle draws it.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import plotly.graph_objects as go

from alignment.links import DriverLink
from alignment.selectors import GoalCard, KPIRow
from kpis.charts import STATUS_COLOURS

STATUS_WORDS = {"green": "On target", "amber": "Watch", "red": "Off target", "none": "No target"}
STATUS_SYMBOLS = {"green": "circle", "amber": "triangle-up", "red": "x", "none": "circle-open"}
LEGEND_NAMES = {"green": "On target", "amber": "Watch", "red": "Off target", "none": "No target or score"}
EDGE_STYLES = {
    "subgoal": ("Goal → sub-goal", {"color": "#64748b", "width": 2}),
    "measures": ("Goal → its KPI", {"color": "#b6bec9", "width": 1}),
    "drives": ("Driver → outcome it moves", {"color": "#7c3aed", "width": 1.5, "dash": "dot"}),
}
ROW_PX = 36  # vertical space per node in the tallest column
LABEL_WIDTH = 24  # characters per label line (two lines at most)


@dataclass
class Node:
    key: str  # "goal:<id>" or "kpi:<id>"
    kind: str  # goal | kpi
    label: str
    status: str
    hover: str
    column: int = 0
    y: float = 0.0  # rank from the top: 0 is the first row
    order: int = 0  # first seen, for stable ordering


@dataclass
class Edge:
    source: str
    target: str
    kind: str  # subgoal | measures | drives


@dataclass
class MapLayout:
    nodes: dict[str, Node]
    edges: list[Edge]
    columns: list[str] = field(default_factory=list)  # column headings, left to right

    @property
    def height(self) -> int:
        return int(max((node.y for node in self.nodes.values()), default=0)) + 1


def map_layout(goals: Iterable[GoalCard], links: Iterable[DriverLink]) -> MapLayout:
    """Place every goal and KPI in a column and a row; the rows limit crossing lines by putting
    each node near the nodes it is linked to on its left."""
    nodes: dict[str, Node] = {}
    edges: list[Edge] = []
    outcome_role: set[int] = set()
    driver_role: set[int] = set()
    drives: dict[int, set[int]] = defaultdict(set)
    depth = 0

    def add(node: Node) -> Node:
        node.order = len(nodes)
        return nodes.setdefault(node.key, node)

    def walk(goal: GoalCard, level: int, path: frozenset[int]) -> None:
        nonlocal depth
        depth = max(depth, level)
        add(
            Node(
                key=f"goal:{goal.id}",
                kind="goal",
                label=goal.title,
                status=goal.score.status,
                hover=_goal_hover(goal),
                column=level,
            )
        )
        for row in goal.outcomes + goal.drivers:
            add(_kpi_node(row))
            (outcome_role if row.role == "outcome" else driver_role).add(row.kpi_id)
            edges.append(Edge(f"goal:{goal.id}", f"kpi:{row.kpi_id}", "measures"))
        for child in goal.children:
            if child.id in path:
                continue
            edges.append(Edge(f"goal:{goal.id}", f"goal:{child.id}", "subgoal"))
            walk(child, level + 1, path | {child.id})

    for goal in goals:
        walk(goal, 0, frozenset({goal.id}))
    for link in links:
        add(_kpi_node(link.outcome))
        add(_kpi_node(link.driver))
        drives[link.driver.kpi_id].add(link.outcome.kpi_id)
        edges.append(Edge(f"kpi:{link.driver.kpi_id}", f"kpi:{link.outcome.kpi_id}", "drives"))

    goal_columns = depth + 1 if any(node.kind == "goal" for node in nodes.values()) else 0
    layers: dict[int, int] = {}

    def layer(kpi_id: int, path: frozenset[int]) -> int:
        """1: judged by a goal (or only ever driven); 2 and up: right of what it drives."""
        if kpi_id in layers:
            return layers[kpi_id]
        if kpi_id in outcome_role:
            result = 1
        else:
            moved = [outcome for outcome in drives.get(kpi_id, ()) if outcome not in path]
            if moved:
                result = 1 + max(layer(outcome, path | {outcome}) for outcome in moved)
            else:
                result = 2 if kpi_id in driver_role else 1
        layers[kpi_id] = result
        return result

    for node in nodes.values():
        if node.kind == "kpi":
            kpi_id = int(node.key.split(":")[1])
            node.column = goal_columns - 1 + layer(kpi_id, frozenset({kpi_id}))
    _place_rows(nodes, edges)
    count = max((node.column for node in nodes.values()), default=-1) + 1
    headings = ["Goals"] + ["Sub-goals"] * (goal_columns - 1) if goal_columns else []
    headings += ["Financial outcomes", "Operational drivers"]
    headings += ["Drivers of drivers"] * max(0, count - len(headings))
    return MapLayout(nodes=nodes, edges=edges, columns=headings[:count])


def _place_rows(nodes: dict[str, Node], edges: list[Edge]) -> None:
    """Rows per column: left to right, each node at the mean row of its neighbours further left
    (the barycentre), pushed apart to one row at least; then goals move next to their KPIs."""
    columns: dict[int, list[Node]] = defaultdict(list)
    for node in sorted(nodes.values(), key=lambda n: n.order):
        columns[node.column].append(node)
    if not columns:
        return
    height = max(len(column) for column in columns.values()) - 1
    neighbours: dict[str, list[str]] = defaultdict(list)
    for edge in edges:
        neighbours[edge.source].append(edge.target)
        neighbours[edge.target].append(edge.source)
    placed: set[str] = set()
    for index in sorted(columns):
        column = columns[index]
        if not placed:
            wanted = {node.key: _spread(i, len(column), height) for i, node in enumerate(column)}
        else:
            wanted = {}
            for node in column:
                around = [nodes[key].y for key in neighbours[node.key] if key in placed]
                wanted[node.key] = sum(around) / len(around) if around else height + 1 + node.order / 1e6
        _fit(column, wanted, height)
        placed.update(node.key for node in column)
    # Second pass, right to left over the goal columns: a goal sits level with what it links to.
    for index in sorted((i for i in columns if columns[i][0].kind == "goal"), reverse=True):
        column = columns[index]
        wanted = {}
        for node in column:
            around = [nodes[key].y for key in neighbours[node.key] if nodes[key].column > index]
            wanted[node.key] = sum(around) / len(around) if around else node.y
        _fit(column, wanted, height)


def _spread(i: int, count: int, height: int) -> float:
    return height / 2 if count == 1 else i * height / (count - 1)


def _fit(column: list[Node], wanted: dict[str, float], height: int) -> None:
    """Rows as close to ``wanted`` as possible, in that order, one apart, within 0..height."""
    column.sort(key=lambda node: (wanted[node.key], node.order))
    previous = None
    for node in column:
        node.y = max(wanted[node.key], 0.0) if previous is None else max(wanted[node.key], previous + 1)
        previous = node.y
    if column and column[-1].y > height:
        column[-1].y = float(height)
        for above, below in zip(reversed(column[:-1]), reversed(column[1:]), strict=True):
            above.y = min(above.y, below.y - 1)


def _kpi_node(row: KPIRow) -> Node:
    return Node(key=f"kpi:{row.kpi_id}", kind="kpi", label=row.name, status=row.status, hover=_kpi_hover(row))


def _kpi_hover(row: KPIRow) -> str:
    lines = [f"<b>{_escape(row.name)}</b>", f"{STATUS_WORDS.get(row.status, row.status)}"]
    if row.current is not None:
        lines.append(f"Actual {row.value_text}, target {row.target_text}")
    if row.status_reason:
        lines.append(_wrap(row.status_reason, 60, lines=3))
    if row.department:
        lines.append(f"Owner: {_escape(row.department)}")
    return "<br>".join(lines)


def _goal_hover(goal: GoalCard) -> str:
    words = "No score" if goal.score.status == "none" else STATUS_WORDS[goal.score.status]
    lines = [f"<b>Goal: {_escape(goal.title)}</b>", words, _escape(goal.score.explanation)]
    lines.append(f"{_escape(goal.department)} goal" if goal.department else "Shared goal")
    if goal.owner:
        lines[-1] += f", owner {_escape(goal.owner)}"
    return "<br>".join(lines)


def _escape(text: str) -> str:
    """Plotly reads a small HTML subset in text: keep user text literal."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _wrap(text: str, width: int = LABEL_WIDTH, lines: int = 2) -> str:
    """Plotly text of at most ``lines`` lines of ``width`` characters, user text escaped."""
    return "<br>".join(_escape(line) for line in textwrap.wrap(text, width, max_lines=lines, placeholder="…"))


def alignment_figure(
    goals: Iterable[GoalCard], links: Iterable[DriverLink], *, period_label: str = ""
) -> go.Figure | None:
    """The map as a Plotly figure; None when there is nothing to draw."""
    layout = map_layout(goals, links)
    if not layout.nodes:
        return None
    nodes = layout.nodes
    figure = go.Figure()
    for kind, (name, line) in EDGE_STYLES.items():
        xs: list[float | None] = []
        ys: list[float | None] = []
        for edge in layout.edges:
            if edge.kind != kind:
                continue
            source, target = nodes[edge.source], nodes[edge.target]
            xs += [source.column, target.column, None]
            ys += [-source.y, -target.y, None]
        if xs:
            figure.add_trace(
                go.Scatter(
                    x=xs, y=ys, mode="lines", name=name, line=line, hoverinfo="skip", legendgroup="lines"
                )
            )
    for status in ("green", "amber", "red", "none"):
        group = [node for node in nodes.values() if node.status == status]
        if not group:
            continue
        colour = STATUS_COLOURS.get(status, STATUS_COLOURS["none"])
        goal = [node.kind == "goal" for node in group]
        figure.add_trace(
            go.Scatter(
                x=[node.column for node in group],
                y=[-node.y for node in group],
                mode="markers",
                name=LEGEND_NAMES[status],
                hovertext=[node.hover for node in group],
                hoverinfo="text",
                marker={
                    "opacity": 1,
                    "symbol": [
                        STATUS_SYMBOLS[status] + ("-dot" if is_goal and status == "none" else "")
                        for is_goal in goal
                    ],
                    "size": [20 if is_goal else 13 for is_goal in goal],
                    "color": colour,
                    "line": {
                        "color": colour if status == "none" else "#1d2430",
                        "width": [2 if is_goal or status == "none" else 0 for is_goal in goal],
                    },
                },
                legendgroup="status",
            )
        )
    # Labels and column headings as annotations: drawn above the lines on a white box, so a
    # line passing behind a label never strikes through its words.
    annotations = [
        {
            "x": node.column,
            "y": -node.y,
            "xref": "x",
            "yref": "y",
            "text": _wrap(node.label),
            "showarrow": False,
            "xanchor": "left",
            "xshift": 13 if node.kind == "goal" else 9,
            "align": "left",
            "bgcolor": "rgba(255,255,255,0.88)",
            "font": {"size": 12, "color": "#1d2430"},
        }
        for node in nodes.values()
    ]
    annotations += [
        {
            "x": index,
            "y": 0.9,
            "xref": "x",
            "yref": "y",
            "text": f"<b>{heading}</b>",
            "showarrow": False,
            "xanchor": "left",
            "xshift": -8,
            "font": {"size": 12, "color": "#5b6576"},
        }
        for index, heading in enumerate(layout.columns)
    ]
    title = "How goals, KPIs and their drivers connect"
    figure.update_layout(
        title={"text": f"{title} · {period_label}" if period_label else title, "x": 0, "xanchor": "left"},
        xaxis={"visible": False, "range": [-0.12, len(layout.columns) - 0.1], "fixedrange": True},
        yaxis={"visible": False, "range": [-layout.height + 0.4, 1.5], "fixedrange": True},
        height=130 + ROW_PX * layout.height,
        margin={"l": 10, "r": 10, "t": 50, "b": 60},
        legend={"orientation": "h", "x": 0, "y": 0, "yanchor": "top"},
        plot_bgcolor="#ffffff",
        paper_bgcolor="#ffffff",
        hovermode="closest",
        hoverlabel={"align": "left"},
        annotations=annotations,
        font={"family": "system-ui, -apple-system, Segoe UI, Roboto, Arial, sans-serif"},
    )
    return figure

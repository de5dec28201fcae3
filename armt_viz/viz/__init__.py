"""Visualization: pure plotly figure builders, an ipywidgets explorer and Panel dashboard components.

Layout (imports flow downward only; nothing here imports torch):

    _style.py        one plotly template, the colorblind-safe palette, axis titles from CF attrs
    _spec.py         fast subplot-grid builder of figure dicts (validated once, as a go.Figure)
    aggregate.py     server-side min/max aggregation per pixel column (spikes never vanish)
    data.py          small, pure selections from a trace (series, ledger tables, probe outcomes)
    figures*.py      plotly builders (no Panel import): timeline, memory, writes, facts, layers
    paths.py         trace-root confinement (no listing or opening outside the root)
    export.py        the current selection as a zipped zarr subset
    explorer.py      ``explore(ds)``: ipywidgets explorer for Jupyter
    dashboard/       Panel components: ``TraceStore`` + one ``Viewer`` per view, ``build_app``
    serve.py         ``run_serve`` behind ``armt-viz serve``

Importing this package is cheap: submodules are imported by path when used.
"""

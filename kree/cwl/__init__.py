"""
The CWL engine: runs Common Workflow Language documents with cwltool, behind
the same engine protocol as kree.engine (DESIGN.md section 5).

Like kree.engine it is a program of its own and imports nothing of the
daemon (the import contracts say so); it reuses kree.engine's protocol
(events, products) and sandbox.  C{document.py} reads a CWL document (its
inputs, steps and references), C{runner.py} runs a job directory with
cwltool in a session of its own, C{cli.py} the commands, C{tool.py}
cwltool's own entry point with its exit code.
"""

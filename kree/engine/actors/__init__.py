"""
The actor library, one module per family.

Writing an actor: subclass L{kree.engine.model.Actor} (or Source for actors
without inputs), set C{class_name} to its Ptolemy II or Kepler name (KREE's
own actors use the C{kree.} prefix), declare C{ports} (PortSpec) and
C{parameters} (ParamSpec, default as Ptolemy expression text), and override
initialize / prefire / fire / postfire / wrapup.  The class docstring's
first paragraph is what `kree-engine actors` and GET /v1/capabilities show;
document each port and parameter there.  Fail with C{raise self.fail(msg)}.
"""

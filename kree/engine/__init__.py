"""
KREE's built-in workflow engine: a separate program that runs one job.

    python -m kree.engine run JOBDIR | validate FILE | params FILE | software

It reads MoML (Kepler/Ptolemy II XML) workflows, builds the model, applies
parameter overrides by full name and the admin's actor policy, and runs the
model under an SDF or PN director.  It talks to the daemon only through the
job directory, file descriptor 3 and standard input (DESIGN.md section 5),
and never imports the daemon.

Modules: moml (parsing), expression (the expression language), model
(actors, ports, parameters), directors (SDF, PN), protocol (events and
answers), registry (actor classes and policy), software (third-party
programs), actors/ (the actor library), cli (the commands).
"""

"""
The admin's actor policy rules, shared by the engine and the daemon's store:
per actor class, allow, replace:<Class>, remove or reject.
"""

POLICY_RULES = ("allow", "remove", "reject")


def valid_policy(rule: str) -> bool:
    return rule in POLICY_RULES or (rule.startswith("replace:") and len(rule) > len("replace:"))

"""
Reading MoML (Kepler/Ptolemy II XML) safely into a plain tree.

The document is parsed with defusedxml: the DOCTYPE line real MoML files
carry is accepted and never fetched; entity declarations and external
references are refused.  Its size is bounded before parsing and its nesting
depth while walking it.

What this version reads: entities (nested composites), properties with
values (parameters, nested properties such as a director's), ports with
their input/output/multiport flags, relations, links (port to relation and
relation to relation), directors as a property whose class ends in
"Director" or as a <director> element, and <group>.  It refuses <class>,
<import>, <input>, <configure>, <deleteEntity>, <deleteRelation>, <unlink>
and other elements it does not know, each with a message naming it.
Attributes that Vergil adds for layout and documentation are skipped.
"""

from __future__ import annotations

from typing import Iterator

import attrs
import defusedxml.ElementTree as DefusedET
from defusedxml import DefusedXmlException

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64

REFUSED_ELEMENTS = {
    "class": "actor-oriented <class> definitions",
    "import": "<import> of other MoML files",
    "input": "<input> of other MoML files",
    "configure": "<configure> blocks",
    "deleteEntity": "<deleteEntity>",
    "deleteRelation": "<deleteRelation>",
    "deletePort": "<deletePort>",
    "deleteProperty": "<deleteProperty>",
    "unlink": "<unlink>",
    "unlinkall": "<unlinkall>",
    "rename": "<rename>",
}
SKIPPED_ELEMENTS = {"doc", "display", "rendition", "vertex", "location"}
IGNORED_CLASS_PREFIXES = (
    "ptolemy.vergil.",
    "ptolemy.actor.gui.",
    "ptolemy.kernel.attributes.",
    "org.kepler.moml.",
    "org.kepler.sms.",
    "org.kepler.objectmanager.",
    "ptolemy.moml.",
)


class MomlError(Exception):
    """The document cannot be read; C{problems} lists each reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@attrs.define
class MProperty:
    name: str
    class_name: str | None
    value: str | None
    properties: dict[str, "MProperty"] = attrs.Factory(dict)


@attrs.define
class MPort:
    name: str
    class_name: str | None
    input: bool = False
    output: bool = False
    multiport: bool = False


@attrs.define
class MRelation:
    name: str
    class_name: str | None


@attrs.define
class MLink:
    port: str | None = None
    relation: str | None = None
    relation1: str | None = None
    relation2: str | None = None
    # Inside links of a composite's own port (port has no '.').
    @property
    def is_relation_link(self) -> bool:
        return self.relation1 is not None


@attrs.define
class MEntity:
    name: str
    class_name: str | None
    full_name: str
    properties: dict[str, MProperty] = attrs.Factory(dict)
    ports: dict[str, MPort] = attrs.Factory(dict)
    entities: dict[str, "MEntity"] = attrs.Factory(dict)
    relations: dict[str, MRelation] = attrs.Factory(dict)
    links: list[MLink] = attrs.Factory(list)
    director: MProperty | None = None

    def walk(self) -> Iterator["MEntity"]:
        """This entity and every entity inside it, depth first."""
        yield self
        for child in self.entities.values():
            yield from child.walk()


def is_director_class(class_name: str | None) -> bool:
    return bool(class_name) and class_name.rsplit(".", 1)[-1].endswith("Director")


def is_ignored_property(name: str, class_name: str | None, has_value: bool) -> bool:
    if name.startswith("_"):
        return True
    if class_name and class_name.startswith(IGNORED_CLASS_PREFIXES):
        return True
    # Marker attributes without a value (documentation, icons).
    return bool(class_name) and class_name.startswith("ptolemy.kernel.util.") and not has_value


def parse_moml(data: bytes) -> MEntity:
    """
    Parse a MoML document into its top-level entity.

    @raise MomlError: with every problem found.
    """
    if len(data) > MAX_DOCUMENT_BYTES:
        raise MomlError([f"document of {len(data)} bytes exceeds the limit of "
                         f"{MAX_DOCUMENT_BYTES} bytes"])
    try:
        root = DefusedET.fromstring(data, forbid_dtd=False, forbid_entities=True,
                                    forbid_external=True)
    except DefusedXmlException as e:
        raise MomlError([f"refused XML construct: {e} (entity declarations and external "
                         "references are not allowed)"]) from None
    except DefusedET.ParseError as e:
        raise MomlError([f"not well-formed XML: {e}"]) from None
    if root.tag != "entity":
        raise MomlError([f"the top-level element is <{root.tag}>, not <entity>"])
    problems: list[str] = []
    top = _entity(root, "", problems, depth=0)
    if problems:
        raise MomlError(problems)
    return top


def _name(element, where: str, problems: list[str]) -> str | None:
    name = element.get("name")
    if not name:
        problems.append(f"<{element.tag}> without a name in {where or 'the document'}")
        return None
    if "." in name:
        problems.append(f"name {name!r} in {where or 'the document'} contains a period")
        return None
    return name


def _entity(element, parent_full_name: str, problems: list[str], depth: int) -> MEntity:
    name = _name(element, parent_full_name, problems) or "?"
    entity = MEntity(name, element.get("class"), f"{parent_full_name}.{name}")
    _fill(entity, element, problems, depth)
    return entity


def _fill(entity: MEntity, element, problems: list[str], depth: int) -> None:
    where = entity.full_name
    if depth > MAX_DEPTH:
        problems.append(f"{where}: nested more than {MAX_DEPTH} levels deep")
        return
    for child in element:
        tag = child.tag
        if not isinstance(tag, str):
            continue  # comments, processing instructions
        if tag in REFUSED_ELEMENTS:
            problems.append(f"{where}: {REFUSED_ELEMENTS[tag]} are not supported in this version")
        elif tag in SKIPPED_ELEMENTS:
            continue
        elif tag == "group":
            _fill(entity, child, problems, depth + 1)
        elif tag == "entity":
            sub = _entity(child, where, problems, depth + 1)
            if sub.name in entity.entities:
                problems.append(f"{sub.full_name}: defined twice")
            entity.entities[sub.name] = sub
        elif tag in ("property", "director"):
            prop = _property(child, where, problems, depth + 1)
            if prop is None:
                continue
            if tag == "director" or is_director_class(prop.class_name):
                if entity.director is not None:
                    problems.append(f"{where}: more than one director")
                entity.director = prop
            else:
                entity.properties[prop.name] = prop
        elif tag == "port":
            name = _name(child, where, problems)
            if name is None:
                continue
            port = MPort(name, child.get("class"))
            for flag in child:
                if flag.tag == "property" and flag.get("name") in ("input", "output", "multiport"):
                    value = (flag.get("value") or "true").strip().lower()
                    setattr(port, flag.get("name"), value != "false")
            entity.ports[name] = port
        elif tag == "relation":
            name = _name(child, where, problems)
            if name is not None:
                entity.relations[name] = MRelation(name, child.get("class"))
        elif tag == "link":
            link = MLink(child.get("port"), child.get("relation"), child.get("relation1"),
                         child.get("relation2"))
            if not ((link.port and link.relation) or (link.relation1 and link.relation2)):
                problems.append(f"{where}: <link> needs port and relation, or relation1 and "
                                "relation2")
                continue
            entity.links.append(link)
        else:
            problems.append(f"{where}: unknown element <{tag}>")


def _property(element, where: str, problems: list[str], depth: int) -> MProperty | None:
    name = _name(element, where, problems)
    if name is None:
        return None
    class_name = element.get("class")
    value = element.get("value")
    if element.tag == "property" and is_ignored_property(name, class_name, value is not None):
        return None
    prop = MProperty(name, class_name, value)
    if depth > MAX_DEPTH:
        problems.append(f"{where}.{name}: nested more than {MAX_DEPTH} levels deep")
        return prop
    for child in element:
        if child.tag == "property":
            sub = _property(child, f"{where}.{name}", problems, depth + 1)
            if sub is not None:
                prop.properties[sub.name] = sub
        elif child.tag in ("doc", "display"):
            continue
        elif child.tag in REFUSED_ELEMENTS:
            problems.append(f"{where}.{name}: {REFUSED_ELEMENTS[child.tag]} are not supported "
                            "in this version")
    return prop

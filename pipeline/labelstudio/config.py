"""The labeling interface, generated from the class list: one image, one single choice.

The choices are the classes in class-list order plus `UNSURE`, which pull drops and counts.
Task data carries `image` (what the interface shows) and `sample_id` (how pull maps answers
back); `FROM_NAME`/`TO_NAME` name the control and the object in predictions and annotations.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

from pipeline.core.errors import PipelineError
from pipeline.sources import readers as sources

FROM_NAME = "label"
TO_NAME = "image"
UNSURE = sources.UNSURE  # "unsure": the answer that is no label (the labelstudio source skips it too)


def labeling_config(classes: list[str]) -> str:
    if not classes:
        raise PipelineError("the class list is empty: nothing to label")
    if UNSURE in classes:
        raise PipelineError(f'a class is named {UNSURE!r}, which is the reserved "unsure" answer')
    if len(set(classes)) != len(classes):
        raise PipelineError("the class list has duplicates")
    choices = "\n".join(f"    <Choice value={quoteattr(str(c))}/>" for c in classes)
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="${TO_NAME}" zoom="true" maxWidth="256px"/>\n'
        f'  <Header value="Which class is this image? (the suggestion is the model\'s guess)"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single-radio" required="true">\n'
        f"{choices}\n"
        f'    <Choice value="{UNSURE}" hint="I cannot tell"/>\n'
        "  </Choices>\n"
        "</View>\n"
    )


def classes_of(config: str) -> list[str]:
    """The class list of a config `labeling_config` wrote (the unsure choice left out)."""
    try:
        root = ET.fromstring(config)
    except ET.ParseError as e:
        raise PipelineError(f"the project's labeling config is not valid XML: {e}") from None
    for node in root.iter("Choices"):
        if node.get("name") == FROM_NAME:
            return [c.get("value") for c in node.iter("Choice") if c.get("value") != UNSURE]
    raise PipelineError(
        f'the project\'s labeling config has no <Choices name="{FROM_NAME}">: '
        "was it created by `python -m pipeline label push`?"
    )


def choice_result(label: str) -> list[dict]:
    """A prediction or annotation `result` choosing `label`."""
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [label]}}]

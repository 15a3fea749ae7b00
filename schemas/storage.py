"""Cloud Storage object events, shaped exactly like the ones Eventarc delivers.

The local bucket adapter emits these too, so intake sees one event shape whatever the bucket is.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

FINALIZED = "google.cloud.storage.object.v1.finalized"
DELETED = "google.cloud.storage.object.v1.deleted"
STORAGE_SOURCE_PREFIX = "//storage.googleapis.com/projects/_/buckets/"


class StorageObjectData(BaseModel):
    """The ``data`` of a storage CloudEvent (Cloud Storage's JSON API object resource).

    Numbers that Cloud Storage sends as strings (``size``, ``generation``) stay strings on the wire and are read
    through the properties below.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    kind: str = "storage#object"
    bucket: str
    name: str = Field(min_length=1, max_length=1024)
    generation: str = "1"
    metageneration: str = "1"
    size: str = "0"
    content_type: str | None = Field(default=None, alias="contentType")
    md5_hash: str | None = Field(default=None, alias="md5Hash")
    crc32c: str | None = None
    time_created: str | None = Field(default=None, alias="timeCreated")
    updated: str | None = None
    storage_class: str | None = Field(default="STANDARD", alias="storageClass")
    etag: str | None = None
    id: str | None = None
    self_link: str | None = Field(default=None, alias="selfLink")

    @property
    def size_bytes(self) -> int:
        """Object size in bytes."""
        return int(self.size)

    @property
    def generation_number(self) -> int:
        """Object generation: changes whenever the object is overwritten."""
        return int(self.generation)

    def to_wire(self) -> dict[str, Any]:
        """The JSON form Cloud Storage sends (camelCase, unset fields dropped)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def storage_event_attributes(data: StorageObjectData, *, event_id: str, time: str,
                             event_type: str = FINALIZED) -> dict[str, str]:
    """The CloudEvents context attributes Eventarc puts on a storage event."""
    return {
        "id": event_id,
        "source": STORAGE_SOURCE_PREFIX + data.bucket,
        "type": event_type,
        "specversion": "1.0",
        "subject": "objects/" + data.name,
        "time": time,
        "datacontenttype": "application/json",
    }

"""The contract as built: every topic's name (``topics``), topic specs and schemas from
topic_specs/, decoding and validation. Bytes in, core events or a reason out; imports
app.core, orjson, fastjsonschema; no Kafka."""

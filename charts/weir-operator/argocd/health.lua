-- Argo CD health check for weir.dev IngestPipeline and SinkBinding (the same script for
-- both; see the README for the argocd-cm keys). It reads what the operator writes:
-- status.observedGeneration and the Ready condition of status.conditions.
--   Healthy      Ready is True and the operator has observed the current generation.
--   Progressing  the current generation is not observed yet; Ready is absent or Unknown;
--                Ready is False only because the pods are starting (reason Progressing)
--                or the topics are being created (TopicsReady reason Creating).
--   Degraded     Ready is False for any other reason (InvalidSpec, PipelineNotFound,
--                TopicsNotReady after a Kafka error, ...), with its message.
local hs = {}

local function condition(conditions, type)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return c.reason or ""
end

local generation = obj.metadata.generation
local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the resource"
  return hs
end
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition(status.conditions, "Ready")
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

local topics = condition(status.conditions, "TopicsReady")
if ready.reason == "Progressing"
  or (ready.reason == "TopicsNotReady" and topics ~= nil and topics.reason == "Creating") then
  hs.status = "Progressing"
else
  hs.status = "Degraded"
end
hs.message = describe(ready)
return hs

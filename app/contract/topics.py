"""The contract's logical topic names; the configured prefix goes in front of each."""

SERVED = "reco.served"
CLICKS = "reco.clicks"
DETAIL_VIEWS = "reco.detail-views"
BASKET_ADDS = "reco.basket-adds"
CATALOG = "reco.catalog"
RANKINGS = "reco.rankings"
REWARDS = "reco.rewards"
DEAD_LETTER = "reco.dead-letter"
REACTION_TOPICS = (CLICKS, DETAIL_VIEWS, BASKET_ADDS)
# The topics the join reads; they must be co-partitioned (same partition count).
JOIN_INPUT_TOPICS = (SERVED, *REACTION_TOPICS)
# The reaction type each reaction topic carries; reward tables are keyed by type.
REACTION_TYPE_BY_TOPIC = {CLICKS: "click", DETAIL_VIEWS: "detail_view", BASKET_ADDS: "basket_add"}
REACTION_TOPIC_BY_TYPE = {kind: topic for topic, kind in REACTION_TYPE_BY_TOPIC.items()}
SITE_CONFIG = "reco.site-config"

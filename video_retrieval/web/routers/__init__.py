"""One ``APIRouter`` per area: meta (health, info), search, localize, media (video, thumbnails),
page (the HTML page)."""

"""Ray-side code: the Ray Data engine (`ray_engine.run_ray`), its actor (`actors.ShardConverter`) and the
``ray job submit`` entrypoint (`entrypoint.py`).

The library (`resize_pipeline`) never imports Ray; everything that does lives here.
"""

"""HTTP controllers: thin, each handler guarded or marked ``opt={"public": True}``."""

"""Face tracking onto the avatar head rig."""

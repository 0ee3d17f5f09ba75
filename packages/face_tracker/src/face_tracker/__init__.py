"""Face tracking onto the avatar head rig.

Landmarker, Detections            -- MediaPipe face detection + 478-point face mesh (landmarker.py)
correspondence                    -- landmarker point -> guide-mesh vertex pairs (correspondence.py)
LandmarkRig                       -- the corresponding vertices, posed like Avatar.pose_mesh (rig.py)
fit_rigid, initial_pose           -- head pose per frame (rigid.py)
fit_landmarks, fit_detections     -- head pose + rig weights + codes over a clip (fit.py)
track_video, save_track           -- a whole video: stream, fit per segment, track file (track.py, `face-track`)
"""
